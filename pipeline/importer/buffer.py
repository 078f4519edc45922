"""``<buffer>`` sections (v1) and the flat buffer parameters of v0.12, as ``[outputs.NAME.buffer]``.

Written: what decides which records are delivered, where and when a time window closes
(timekey, timekey_wait, flush mode and interval, retries, limits, overflow). Fluentd's
defaults are written where they differ from logferry's and decide that: a time-keyed
buffer waits ``timekey_wait`` 600 s and flushes lazily (Fluentd's rule: lazy when the
chunk keys hold ``time`` and no ``flush_interval`` is given). Where the chunks are kept
(``@type file``, ``path``) is logferry's business: always files under ``state_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.importer import values
from pipeline.importer.context import Context, Reader
from pipeline.importer.fluentd_conf import Directive

#: v0.12 names (flat in ``<match>``) → v1 names (in ``<buffer>``).
V0_NAMES = {
    "buffer_chunk_limit": "chunk_limit_size", "buffer_queue_full_action": "overflow_action",
    "num_threads": "flush_thread_count", "retry_limit": "retry_max_times", "max_retry_wait": "retry_max_interval",
    "disable_retry_limit": "retry_forever", "time_slice_wait": "timekey_wait", "buffer_type": "@type",
    "buffer_path": "path", "buffer_queue_limit": "queue_limit_length",
}
#: v1 parameter → (logferry key, converter); each is read under its v0.12 names too.
DIRECT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "timekey_wait": ("timekey_wait", lambda v: values.whole(values.seconds(v))),
    "chunk_limit_size": ("chunk_limit_bytes", values.size),
    "chunk_limit_records": ("chunk_limit_records", int),
    "total_limit_size": ("total_limit_bytes", values.size),
    "flush_interval": ("flush_interval", values.seconds),
    "flush_thread_count": ("workers", int),
    "retry_max_times": ("retry_limit", int),
    "retry_timeout": ("retry_timeout", values.seconds),
    "retry_wait": ("retry_wait", values.seconds),
    "retry_max_interval": ("retry_max_interval", values.seconds),
    "retry_randomize": ("retry_randomize", values.boolean),
}
#: Accepted and meaningless here: logferry keeps its chunks in files under state_dir.
IGNORED = frozenset({"@type", "type", "path", "flush_at_shutdown", "queue_limit_length", "retry_type",
                     "retry_exponential_backoff_base", "compress", "queued_chunks_limit_size", "timekey_use_utc",
                     "timekey_zone", "chunk_full_threshold", "flush_thread_interval", "flush_thread_burst_interval",
                     "delayed_commit_timeout", "disable_chunk_backup"})
#: Retrying "forever": logferry bounds retries; this is a century of them.
FOREVER_SECONDS = 100 * 365 * 86400.0


@dataclass(frozen=True)
class BufferDefaults:
    """A plugin's own buffer defaults in Fluentd."""

    time_keyed: bool  # chunk keys default to ["time"] (out_file, out_s3)
    timekey: int = 86400


@dataclass
class BufferResult:
    """The buffer table, and whether it is cut into time windows (with which strftime slice)."""

    table: dict[str, Any]
    time_keyed: bool
    slice_format: str  # how Fluentd names a window in file and object names (time_slice_format)
    flush_at_shutdown: bool | None


def translate_buffer(owner: Directive, owner_reader: Reader, ctx: Context, defaults: BufferDefaults) -> BufferResult:
    """The buffer table of an output directive (``<match>`` or ``<store>``)."""
    sections = owner.sections("buffer")
    section = sections[-1] if sections else None
    reader = Reader(section, ctx, IGNORED) if section else None
    time_keyed = _time_keyed(section, defaults, ctx)
    table: dict[str, Any] = {}
    timekey = _timekey(reader, owner_reader, defaults, ctx)
    if time_keyed:
        table["timekey"] = timekey
        table["timekey_wait"] = 600
    readers = [r for r in (owner_reader, reader) if r is not None]  # the section's values win (read last)
    for fluentd, (ours, convert) in DIRECT.items():
        for source in readers:
            source.put(table, ours, convert, fluentd, *[v0 for v0, v1 in V0_NAMES.items() if v1 == fluentd])
    _queue_limit(table, readers)
    _flush_mode(table, reader or owner_reader, owner_reader, time_keyed, ctx)
    _retry_forever(table, readers, ctx)
    _overflow(table, readers, ctx)
    at_shutdown = _flag(readers, "flush_at_shutdown")
    if time_keyed:
        _local_time(owner, readers, ctx)
    owner_reader.read.update(V0_NAMES, {"time_slice_format", "flush_mode", "flush_at_shutdown", "utc", "localtime",
                             "timezone"})
    if reader is not None:
        reader.leftovers("<buffer>")
    slice_format = owner.value("time_slice_format") or time_slice_format(timekey)
    return BufferResult(table, time_keyed, slice_format, at_shutdown)


def time_slice_format(timekey: int) -> str:
    """The strftime pattern Fluentd names a window's file with, from its width.

    >>> time_slice_format(3600), time_slice_format(86400), time_slice_format(300)
    ('%Y%m%d%H', '%Y%m%d', '%Y%m%d%H%M')
    """
    if timekey < 60:
        return "%Y%m%d%H%M%S"
    if timekey < 3600:
        return "%Y%m%d%H%M"
    return "%Y%m%d%H" if timekey < 86400 else "%Y%m%d"


def _time_keyed(section: Directive | None, defaults: BufferDefaults, ctx: Context) -> bool:
    """Whether chunks are cut by time: the section's chunk keys, or the plugin's default keys."""
    keys = [k.strip() for k in section.arg.split(",") if k.strip()] if section else []
    if not keys:
        return defaults.time_keyed
    assert section is not None
    other = [k for k in keys if k not in ("time", "tag")]
    if other:
        ctx.add("approximated", section.where, section.heading,
                f"chunk keys {', '.join(other)}: logferry cuts chunks by time window only")
    return "time" in keys


def _timekey(reader: Reader | None, owner: Reader, defaults: BufferDefaults, ctx: Context) -> int:
    for source in (reader, owner):
        if source is None:
            continue
        width = source.get(values.seconds, "timekey")
        if width is not None:
            return int(width)
        fmt = source.text("time_slice_format")
        if fmt is not None:
            return _width_of(fmt)
    return defaults.timekey


def _width_of(fmt: str) -> int:
    """The window width a v0.12 ``time_slice_format`` implies.

    >>> _width_of("%Y%m%d%H"), _width_of("%Y%m%d"), _width_of("%Y%m%d%H%M")
    (3600, 86400, 60)
    """
    if "%M" in fmt:
        return 60
    if "%H" in fmt:
        return 3600
    return 86400


def _flush_mode(table: dict[str, Any], reader: Reader, owner: Reader, time_keyed: bool, ctx: Context) -> None:
    mode = reader.param("flush_mode") or owner.param("flush_mode")
    value = mode.value if mode else "default"
    if value == "default":
        value = "interval" if "flush_interval" in table or not time_keyed else "lazy"
        if value == "interval" and "flush_interval" not in table:
            return  # Fluentd flushes every 60 s there; logferry's 5 s default is kept (a latency knob)
    if value == "immediate":
        assert mode is not None
        ctx.add("approximated", mode.where, "flush_mode immediate", "logferry flushes every 0.2 s instead")
        value, table["flush_interval"] = "interval", 0.2
    if value not in ("interval", "lazy"):
        assert mode is not None
        ctx.add("refused", mode.where, f"flush_mode {value}", "expected default, lazy, interval or immediate")
        return
    table["flush_mode"] = value


def _local_time(owner: Directive, readers: list[Reader], ctx: Context) -> None:
    """Fluentd cuts and names time windows in local time unless told UTC; logferry always in UTC."""
    utc = _flag(readers, "timekey_use_utc") or _flag(readers, "utc") or _flag(readers, "localtime") is False
    zone = next((z for r in readers if (z := r.text("timekey_zone", "timezone"))), None)
    if utc or (zone is not None and zone.strip().upper() in ("UTC", "Z", "+0000", "+00:00", "-0000")):
        return
    what = f"timekey_zone {zone}" if zone else "timekey_use_utc false"
    ctx.add("approximated", owner.where, what,
            "logferry cuts time windows and names their files, objects and indices in UTC; Fluentd used "
            f"{'that zone' if zone else 'the local time'}: on a host not in UTC, names shift by its offset")


def _queue_limit(table: dict[str, Any], readers: list[Reader]) -> None:
    """v0.12 bounded a buffer by chunks queued (``buffer_queue_limit``) times their size."""
    for reader in readers:
        chunks = reader.get(int, "queue_limit_length", "buffer_queue_limit")
        if chunks is not None and "total_limit_bytes" not in table:
            table["total_limit_bytes"] = chunks * table.get("chunk_limit_bytes", 8 << 20)


def _retry_forever(table: dict[str, Any], readers: list[Reader], ctx: Context) -> None:
    for reader in readers:
        forever = reader.get(values.boolean, "retry_forever", "disable_retry_limit")
        if forever:
            table["retry_limit"] = 1_000_000_000
            table["retry_timeout"] = FOREVER_SECONDS
            param = reader.param("retry_forever", "disable_retry_limit")
            assert param is not None
            ctx.add("approximated", param.where, f"{param.key} true",
                    "logferry retries a chunk for a century, then sets it aside in buffer/NAME/dead/")


def _overflow(table: dict[str, Any], readers: list[Reader], ctx: Context) -> None:
    for reader in readers:
        param = reader.param("overflow_action", "buffer_queue_full_action")
        if param is None:
            continue
        action = {"exception": "throw_exception"}.get(param.value, param.value)
        if action in ("block", "drop_oldest_chunk"):
            table["overflow_action"] = action
        elif action == "throw_exception":
            ctx.add("approximated", param.where, f"{param.key} {param.value}",
                    "logferry pauses the sources instead (block): nothing is dropped")
            table["overflow_action"] = "block"
        else:
            ctx.add("refused", param.where, f"{param.key} {param.value}", "expected block or drop_oldest_chunk")


def _flag(readers: list[Reader], key: str) -> bool | None:
    found = None
    for reader in readers:
        value = reader.get(values.boolean, key)
        found = value if value is not None else found
    return found
