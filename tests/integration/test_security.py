"""Who may see records: the tap's socket, the TCP endpoint, the modes of what the daemon creates.

The daemon runs the way the packaged systemd unit runs it (tests/support: no systemd
needed): with the service's group as its group (``Group=``, here the test user
``logferry-test``'s group, through setpriv), with the unit's ``UMask=`` or a permissive
or restrictive one, and with ``$RUNTIME_DIRECTORY`` made as ``RuntimeDirectory=`` makes it.
Its files live under a directory everybody may enter, so only the daemon's own modes keep
an outsider out: a file, directory or socket left open fails the test.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import generator
from tests.support.daemon import REPO, Daemon, Layout, read_lines, render_toml, streaming, wait_for
from tests.support.users import ensure_system_user

pytestmark = pytest.mark.integration
SERVICE = "logferry-test"  # the service's user and group (the Elasticsearch tests' user)
MEMBER = "logferry-test-tap"  # a member of the service's group
OUTSIDER = "logferry-test-other"  # any other local user
UNIT = REPO / "systemd" / "logferry.service"


def unit_setting(key: str) -> str:
    """The value of ``key=`` in the packaged unit."""
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= in {UNIT}: {values}"
    return values[0]


def needs_root() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("useradd") is None:
        pytest.skip("needs root, setpriv and useradd (to run as the service's group and create users)")


@pytest.fixture
def open_layout() -> Iterator[Layout]:
    """A layout under a directory every user may enter (pytest's tmp_path is 0700: it would hide leaks)."""
    base = Path(tempfile.mkdtemp(prefix="logferry-sec-"))
    base.chmod(0o755)
    try:
        yield Layout(base)
    finally:
        shutil.rmtree(base)


@contextlib.contextmanager
def service_daemon(layout: Layout, umask: int, runtime_dir: Path | None = None) -> Iterator[Daemon]:
    """The daemon with the service's group (as root: reading the logs needs no grant) and ``umask``."""
    prefix = ["sh", "-c", f'umask {umask:04o} && exec "$@"', "umask"]
    if os.geteuid() == 0:
        gid = ensure_system_user(SERVICE).pw_gid
        prefix = ["setpriv", f"--regid={gid}", "--clear-groups", *prefix]
    env = {"RUNTIME_DIRECTORY": str(runtime_dir)} if runtime_dir else {}
    with Daemon(layout.config, layout.root / "daemon.log", env, prefix) as daemon:
        yield daemon


def write_pipeline(layout: Layout) -> None:
    """The layout's config with its output in a directory the daemon creates, plus an output that holds its chunks."""
    layout.write_config(output={"path": str(layout.out / "debug" / "%Y%m%d-%H.jsonl")})
    # The generated records' time windows are long closed: only a window wider than their age stays open.
    held = {"type": "file", "path": str(layout.out / "held" / "%Y%m%d.jsonl"),
            "buffer": {"flush_mode": "lazy", "timekey": 10**9}}
    with layout.config.open("a") as config:
        config.write(render_toml({"outputs": {"held": held}}))


def as_user(user: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A tests/support/as_user step, run as ``user``."""
    return subprocess.run([sys.executable, "-m", "tests.support.as_user", user, *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def tap(layout: Layout, user: str | None) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``logferry tap`` in the background, as root (None) or as ``user``."""
    return streaming([sys.executable, "-m", "pipeline", "tap", "-c", str(layout.config)] if user is None else
                     [sys.executable, "-m", "tests.support.as_user", user, "tap", str(layout.config)])


def request_ids(viewer: subprocess.Popen[bytes], count: int) -> list[str]:
    """The request ids of the first ``count`` records a tap viewer prints."""
    return [orjson.loads(line)["request_id"] for line in read_lines(viewer, count)]


def created(layout: Layout) -> list[Path]:
    """Everything the daemon made: its state directory's tree and the outputs' directories."""
    paths = [layout.state, *sorted(layout.state.rglob("*"))]
    for directory in sorted(p for p in layout.out.iterdir() if p.is_dir()):
        paths += [directory, *sorted(directory.rglob("*"))]
    return paths


def assert_private(paths: list[Path], group: int | None) -> list[Path]:
    """Directories 0750, files 0640, sockets 0660, all with the service's group; returns the paths checked.

    A chunk delivered since ``paths`` was listed is gone: it is left out of what was checked.
    """
    wrong, checked = [], []
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        checked.append(path)
        want = 0o750 if stat.S_ISDIR(st.st_mode) else 0o660 if stat.S_ISSOCK(st.st_mode) else 0o640
        if stat.S_IMODE(st.st_mode) != want or (group is not None and st.st_gid != group):
            wrong.append(f"{path}: {stat.S_IMODE(st.st_mode):o} gid {st.st_gid} (want {want:o} gid {group})")
    assert not wrong, "\n".join(wrong)
    return checked


def kinds(layout: Layout, paths: list[Path]) -> set[str]:
    """Which kinds of state the probed paths cover (the test must not pass by probing nothing)."""
    names = {p.relative_to(layout.root).as_posix() for p in paths}
    checks = {"buffer chunk": lambda n: n.startswith("state/buffer/held/") and n.endswith(".staged"),
              "dead letters": lambda n: n.startswith("state/dead-letter/records-"),
              "positions": lambda n: n == "state/positions.json",
              "output": lambda n: n.startswith("out/debug/") and n.endswith(".jsonl"),
              "tap socket": lambda n: n.endswith("tap.sock")}
    return {kind for kind, matches in checks.items() if any(matches(n) for n in names)}


def test_only_root_and_the_service_group_see_records(open_layout: Layout) -> None:
    needs_root()
    layout = open_layout
    service_gid = ensure_system_user(SERVICE).pw_gid
    ensure_system_user(MEMBER, groups=[SERVICE])
    ensure_system_user(OUTSIDER)
    write_pipeline(layout)
    log = layout.logs / "agent.log"
    log.touch(mode=0o600)  # the agent's log: readable by its owner only
    with service_daemon(layout, umask=0o000) as daemon, tap(layout, None) as root_view, \
            tap(layout, MEMBER) as member_view:
        wait_for(lambda: layout.tap_viewers() == 2, what="root's and the member's tap connected")
        generator.write(str(log), 20, max_chars=200, bad_every=7)  # bad lines: dead letters to probe too
        by_root, by_member = request_ids(root_view, 20), request_ids(member_view, 20)
        wait_for(lambda: len(layout.records()) >= 20 and layout.dead_letters(), what="records and dead letters")
        paths = created(layout)
        address = (layout.state / "http.address").read_text().strip()
        probe = as_user(OUTSIDER, "probe", address, *map(str, paths))
        refused = as_user(OUTSIDER, "tap", str(layout.config), timeout=30)
        checked = assert_private(paths, service_gid)
        assert kinds(layout, checked) == {"buffer chunk", "dead letters", "positions", "output", "tap socket"}
        daemon.stop()
    assert by_root == by_member and len(set(by_root)) == 20
    assert probe.returncode == 0, probe.stderr
    results = [orjson.loads(line) for line in probe.stdout.splitlines()]
    assert len(results) == 5 + len(paths)
    http = {r["what"]: r["got"] for r in results if r["what"].startswith("http ")}
    assert http["http /tap"].startswith("HTTP 404") and http["http /tap?tag=**"].startswith("HTTP 404")
    leaks = [r for r in results if any(rid in r["got"] for rid in by_root)]
    assert not leaks, f"record contents reached {OUTSIDER}: {leaks}"
    opened = [r for r in results if not r["what"].startswith("http ") and r["got"] != "denied"]
    assert not opened, f"{OUTSIDER} got into: {opened}"
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"only root and members of group {SERVICE} may tap" in refused.stderr


@pytest.mark.parametrize("umask", [0o000, 0o077, int(unit_setting("UMask"), 8)], ids=lambda m: f"umask{m:04o}")
def test_what_the_daemon_creates_is_owner_and_group_only_whatever_the_umask(open_layout: Layout, umask: int) -> None:
    layout = open_layout
    runtime = layout.root / "run" / "logferry"  # as RuntimeDirectory=logferry makes it
    runtime.mkdir(parents=True)
    runtime.chmod(int(unit_setting("RuntimeDirectoryMode"), 8))
    write_pipeline(layout)
    with service_daemon(layout, umask, runtime_dir=runtime) as daemon:
        generator.write(str(layout.logs / "agent.log"), 20, max_chars=200, bad_every=7)
        wait_for(lambda: len(layout.records()) >= 20 and layout.dead_letters(), what="records and dead letters")
        sock = runtime / "tap.sock"
        assert (layout.state / "tap.address").read_text().strip() == str(sock)
        checked = assert_private([*created(layout), sock], ensure_system_user(SERVICE).pw_gid
                                 if os.geteuid() == 0 else None)
        assert kinds(layout, checked) == {"buffer chunk", "dead letters", "positions", "output", "tap socket"}
        assert daemon.stop() == 0
    assert not sock.exists()  # removed at stop; a stale one (kill -9) is replaced at the next start


def test_the_unit_gives_the_tap_a_runtime_directory_for_the_service_group_only() -> None:
    assert unit_setting("RuntimeDirectory") == "logferry"
    assert unit_setting("RuntimeDirectoryMode") == "0750"
    assert unit_setting("StateDirectoryMode") == "0750"
    assert unit_setting("UMask") == "0027"
    assert unit_setting("Group") == "logferry"  # the socket's group: who may tap
    # `systemd-analyze verify` of the unit: tests/integration/test_operations.py


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every (sample name, labels) of a Prometheus scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text) for s in f.samples}


def test_ten_thousand_distinct_values_in_a_record_field_leave_the_metric_series_bounded(layout: Layout) -> None:
    layout.write_config()
    log = layout.logs / "agent.log"

    def write(start: int, count: int) -> None:
        with log.open("ab") as out:
            for n in range(start, start + count):
                record = {"timestamp": time.time(), "request_id": f"flood-{n}", "model": f"model-{n:05d}-x",
                          "user": f"user-{n}", "input": f"prompt {n}", "output": f"answer {n}", "tokens": n}
                out.write(orjson.dumps(record) + b"\n")

    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        write(0, 10)
        wait_for(lambda: len(layout.records()) >= 10, what="the first records")
        # The output counts a delivery just after writing it: its series are complete from then on.
        wait_for(lambda: orjson.loads(layout.http("/status")[1])["outputs"]["debug"]["last_success"],
                 what="the first delivery counted")
        before = series(layout.http("/metrics")[1].decode())
        write(10, 10_000)
        wait_for(lambda: len(layout.records()) >= 10_010, what="10,000 more records")
        metrics, status = layout.http("/metrics")[1].decode(), layout.http("/status")[1].decode()
        daemon.stop()
    assert series(metrics) == before
    assert "model-" not in metrics + status and "flood-" not in metrics + status and "user-" not in metrics + status


def test_the_tap_group_is_named_in_the_socket_log_line(layout: Layout) -> None:
    layout.write_config()
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        line = wait_for(lambda: next((x for x in daemon.log().splitlines() if "tap listening on" in x), None))
        daemon.stop()
    group = grp.getgrgid(os.getegid()).gr_name
    assert f"{layout.state / 'tap.sock'} (mode 660: root and group {group} may tap)" in line


def test_a_reload_ends_the_viewers_streams_and_serves_the_tap_again(layout: Layout) -> None:
    layout.write_config()
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        with tap(layout, None) as before:
            wait_for(lambda: layout.tap_viewers() == 1, what="a viewer")
            daemon.signal(signal.SIGHUP)
            assert before.wait(30) == 0  # its stream ended: it is not left waiting on a pipeline that is gone
        wait_for(lambda: daemon.log().count("logferry running") == 2, what="the reloaded pipeline")
        with tap(layout, None) as after:
            wait_for(lambda: layout.tap_viewers() == 1, what="a viewer of the new pipeline")
            generator.write(str(layout.logs / "agent.log"), 5, max_chars=200)
            seen = request_ids(after, 5)
        daemon.stop()
    assert seen == [generator.request_id(1, n) for n in range(5)]
