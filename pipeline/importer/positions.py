"""Cut-over: seed logferry's positions from td-agent's ``pos_file``s and Fluent Bit's tail database.

in_tail's position file has one line per file, ``path<TAB>offset<TAB>inode``, both numbers
as 16 hex digits; an offset of ``ffffffffffffffff`` marks an entry no longer watched (a
rotated-away file), and after a rotation the same path may appear again further down (the
last watched entry is the current one). Fluent Bit keeps the same facts in the SQLite table
``in_tail_files`` (``name``, ``offset``, ``inode``, ``created``, ``rotated``); a row of a file it
was still finishing after a rotation (``rotated = 1``) is reported, not seeded: its name is
outside the source's globs.

Each entry is checked against the file at its path now: same inode, and not shorter than the
offset. Only then is a position written (keyed by device and inode, with the fingerprint of
the file's first bytes, as the tail source keys its own). Anything else is reported and left
unseeded, never guessed: a rotated file's successor is then read from its head.

>>> parse_pos_lines(["/var/log/a.log\\tffffffffffffffff\\t0000000000000009",
...                  "/var/log/a.log\\t00000000000001f4\\t0000000000001a2b"], "td.pos")
[PosEntry(path='/var/log/a.log', offset=500, inode=6699, origin='td.pos:2', rotated=False)]
"""

from __future__ import annotations

import fnmatch
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pipeline.durability import make_dirs
from pipeline.errors import ConfigError
from pipeline.importer.report import Report
from pipeline.importer.sources import SourceSpec
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore
from pipeline.sources.tail.heads import FP_BYTES, fingerprint
from pipeline.sources.tail.reader import file_key

UNWATCHED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class PosEntry:
    """Where td-agent (or Fluent Bit) had read a file to."""

    path: str
    offset: int
    inode: int
    origin: str  # "pos_file:line" or "db:row"
    rotated: bool = False  # Fluent Bit was finishing it under a rotated name


def parse_pos_lines(lines: list[str], name: str) -> list[PosEntry]:
    """The watched entries of an in_tail position file, the last one per path."""
    latest: dict[str, PosEntry] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        try:
            path, offset, inode = parts[0], int(parts[1], 16), int(parts[2], 16)
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"{name}:{number}: not an in_tail position line (path, offset, inode)") from exc
        if offset == UNWATCHED:
            latest.pop(path, None)
        else:
            latest[path] = PosEntry(path, offset, inode, f"{name}:{number}")
    return list(latest.values())


def read_positions(path: Path) -> list[PosEntry]:
    """Entries of a td-agent pos_file, or of a Fluent Bit database (recognised by its SQLite header)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if head.startswith(b"SQLite format 3"):
        return _fluent_bit_entries(path)
    return parse_pos_lines(path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(), str(path))


def _fluent_bit_entries(path: Path) -> list[PosEntry]:
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT id, name, offset, inode, rotated FROM in_tail_files").fetchall()
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: not a Fluent Bit tail database: {exc}") from exc
    return [PosEntry(str(name), int(offset), int(inode), f"{path}:id {row_id}", bool(rotated))
            for row_id, name, offset, inode, rotated in rows]


def seed(files: list[Path], sources: list[SourceSpec], state_dir: Path, report: Report) -> int:
    """Write positions for every entry that still describes its file; report the others. Returns how many."""
    store = PositionStore(state_dir / "positions.json")
    if store.path.exists():  # not load(): that would set a damaged store aside, and this one is not ours to touch
        report.add("refused", str(store.path), "positions", "logferry already has positions there: nothing seeded "
                   "(seeding is for the first start; remove the state directory to start over)")
        return 0
    seeded: dict[tuple[str, str], FilePosition] = {}
    for pos_file in files:
        for entry in read_positions(pos_file):
            position = _position(entry, _source_for(entry, pos_file, sources), report)
            if position is not None:
                seeded[(position.source, position.key)] = position
    make_dirs(state_dir)
    store.save_now(dict(seeded))
    _give_to_the_state_dirs_owner(store.path, state_dir)
    for position in seeded.values():
        report.add("note", position.path, "position", f"seeded at byte {position.offset} for source {position.source}")
    return len(seeded)


def _give_to_the_state_dirs_owner(path: Path, state_dir: Path) -> None:
    """Run as root (``sudo logferry import``), the file would be root's, 0640: unreadable to the daemon's user."""
    if os.geteuid() == 0:
        owner = os.stat(state_dir)
        os.chown(path, owner.st_uid, owner.st_gid)


def _source_for(entry: PosEntry, pos_file: Path, sources: list[SourceSpec]) -> SourceSpec | None:
    """The source that named this pos_file, else the first whose globs match the entry's path."""
    for spec in sources:
        if spec.pos_file and os.path.abspath(spec.pos_file) == os.path.abspath(pos_file):
            return spec
    for spec in sources:
        if _follows(spec, entry.path):
            return spec
    return None


def _follows(spec: SourceSpec, path: str) -> bool:
    paths: list[str] = spec.table["paths"]
    excluded: list[str] = spec.table.get("exclude", [])
    return any(fnmatch.fnmatch(path, p) for p in paths) and not any(fnmatch.fnmatch(path, e) for e in excluded)


def _position(entry: PosEntry, spec: SourceSpec | None, report: Report) -> FilePosition | None:
    if entry.rotated:
        report.add("refused", entry.origin, entry.path, "Fluent Bit was still finishing this rotated file: not "
                   f"seeded; ship its rest (from byte {entry.offset}) by hand if it matters")
        return None
    if spec is None:
        report.add("refused", entry.origin, entry.path, "no imported source follows this file: not seeded")
        return None
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        report.add("refused", entry.origin, entry.path, f"cannot open ({exc.strerror}): not seeded")
        return None
    try:
        st = os.fstat(fd)
        problem = _mismatch(entry, st)
        if problem:
            report.add("refused", entry.origin, entry.path, problem)
            return None
        fp, fp_len = fingerprint(fd, FP_BYTES)
    finally:
        os.close(fd)
    return FilePosition(spec.name, file_key(st), entry.path, entry.offset, fp, fp_len)


def _mismatch(entry: PosEntry, st: os.stat_result) -> str | None:
    if st.st_ino != entry.inode:
        return (f"inode {st.st_ino} is not the recorded {entry.inode}: the file was rotated after td-agent saved "
                "this position; not seeded (the new file is read from its head; ship the rotated file's rest by hand)")
    if st.st_size < entry.offset:
        return (f"file is {st.st_size} bytes, shorter than the recorded offset {entry.offset} (truncated?): not "
                "seeded (it is read from its head)")
    return None
