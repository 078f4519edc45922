"""Helpers shared by the benchmark scripts: the machine, the daemon process, /proc figures,
the floor, workloads, tables and result files.

Every benchmark runs the real daemon (``python -m pipeline run -c CONFIG``) as a subprocess
and reads its CPU time, peak RSS, descriptors and context switches from ``/proc`` (Linux).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "bench"
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import generator  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
READY = b"logferry running"


# --------------------------------------------------------------------------------------------
# the machine and the run


def git_state() -> str:
    """Commit of the working tree, with ``+dirty`` when pipeline/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "pipeline"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


IDLE_OTHERS_PCT = 10.0  # other processes' CPU during a run, % of one core, under which the machine counts as idle


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo ("" when there is none, e.g. on ARM)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return ""
    found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
    return found.group(1).strip() if found else ""


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot, summed over the cores (/proc/stat),
    steal included (time another VM ran on our cores is time we did not get). Interrupt time is left
    out: on an idle machine it is mostly the run's own disk I/O."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return (user + nice + system + steal) / TICKS


def kernel_thread_seconds() -> float:
    """CPU seconds of the kernel's own threads (children of kthreadd: writeback, the journal, ...),
    which a run's writes and fsyncs keep busy: not another user's load."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # a process that just ended
            continue
        if fields[1] == "2":  # ppid: kthreadd
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def own_tree_seconds() -> float:
    """CPU seconds of this script and of the children it has waited for (daemons, floors, servers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_RUN_START: dict[str, float] = {}


def machine() -> dict[str, Any]:
    """Where and when: cores, CPU, Python, date, load, the command line and the code's commit.

    Call it before the measured work: it also notes the machine's CPU use, so that
    ``finish_run`` can tell how much of the machine other processes took meanwhile.
    """
    _RUN_START.update(busy=machine_busy_seconds(), own=own_tree_seconds(), kernel=kernel_thread_seconds(),
                      wall=time.monotonic())
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "load_before": load[0], "load_before_1_5_15": list(load),
        "command": shlex.join([".venv/bin/python", *sys.argv]), "commit": git_state(),
    }


def finish_run(info: dict[str, Any]) -> dict[str, Any]:
    """Add, in place, what the machine did during the run: the load after it, the CPU other processes
    used meanwhile (the machine's busy time minus this script's, its waited-for children's and the
    kernel threads'), and whether the machine was idle (they used under IDLE_OTHERS_PCT of one core).
    Returns ``info``.

    Call it after every process the script started has been stopped and waited for: the CPU of a
    child still running would count as another process's."""
    wall = time.monotonic() - _RUN_START["wall"]
    kernel = kernel_thread_seconds() - _RUN_START["kernel"]
    others = (machine_busy_seconds() - _RUN_START["busy"]) - (own_tree_seconds() - _RUN_START["own"]) - kernel
    load = os.getloadavg()
    others_pct = max(0.0, 100 * others / wall) if wall > 0 else 0.0
    info.update(load_after=load[0], load_after_1_5_15=list(load), run_seconds=wall, kernel_threads_cpu_s=kernel,
                others_cpu_pct_of_core=others_pct, idle=others_pct < IDLE_OTHERS_PCT)
    return info


def print_header(title: str, info: dict[str, Any]) -> None:
    """The first lines every benchmark prints: the machine, the code, and whether the machine was idle
    (``finish_run`` is called here if the script has not called it)."""
    if "load_after" not in info:
        finish_run(info)
    print(f"{title}")
    print(f"  {info['machine']} ({info['cpu'] or 'cpu unknown'}), Python {info['python']}, {info['date']}, "
          f"commit {info['commit']}")
    print(f"  command: {info['command']}")
    print(f"  {load_line(info)}")


def load_line(info: dict[str, Any]) -> str:
    """Load before and after, the other processes' share, and the verdict on the figures."""
    line = (f"load {info['load_before']:.2f} before, {info['load_after']:.2f} after (1-min averages, this run "
            f"included); other processes used {info['others_cpu_pct_of_core']:.0f}% of a core during the "
            f"{info['run_seconds']:.0f} s run: ")
    if info["idle"]:
        return line + "machine idle"
    return line + "machine LOADED, throughput and latency figures are not comparable"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def floor_medians(runs: Sequence[dict[str, Any]], records: int) -> dict[str, Any]:
    """Medians of alternating floor/daemon runs (each ``{"floor": {...}, "logferry": {...}}``): records/s
    of each, the daemon's ratio to the floor, and the highest peak RSS of the daemon."""
    floor_s = statistics.median(r["floor"]["seconds"] for r in runs)
    lf_s = statistics.median(r["logferry"]["seconds"] for r in runs)
    return {"floor_records_per_s": records / floor_s, "logferry_records_per_s": records / lf_s,
            "ratio_to_floor": floor_s / lf_s, "peak_rss_mb": max(r["logferry"]["peak_rss_mb"] for r in runs)}


def print_floor_runs(runs: Sequence[dict[str, Any]], records: int, medians: dict[str, Any], server: str) -> None:
    """One row per floor/daemon run (records/s, seconds, the daemon's and the ``server``'s CPU, RSS), then
    the ``floor_medians`` line."""
    rows = []
    for r in runs:
        lf = r["logferry"]
        rows.append([f"{records / r['floor']['seconds']:,.0f}", f"{records / lf['seconds']:,.0f}",
                     f"{lf['seconds']:.2f}", f"{lf['cpu_s']:.2f}", f"{lf['server_cpu_s']:.2f}",
                     f"{lf['rss_at_start_mb']:.0f} → {lf['peak_rss_mb']:.0f} MB", f"{r['ratio_to_floor']:.2f}x"])
    print_table(["floor rec/s", "logferry rec/s", "seconds", "logferry CPU-s", f"{server} CPU-s", "RSS start → peak",
                 "/ floor"], rows)
    print(f"  medians: floor {medians['floor_records_per_s']:,.0f} rec/s, "
          f"logferry {medians['logferry_records_per_s']:,.0f} rec/s: {medians['ratio_to_floor']:.2f}x the floor; "
          f"peak RSS {medians['peak_rss_mb']:.0f} MB")


def print_client_runs(runs: Sequence[dict[str, Any]], records: int, pipeline: str) -> dict[str, float]:
    """Each run's plain client (``run["client"]``: seconds, cpu_s, server_cpu_s) beside logferry's; the medians.

    The plain client is the least work a program does with the same client library and server
    (the Kafka benchmarks): the floor above it never talks to a server."""
    rows = [[f"{records / r['client']['seconds']:,.0f}", f"{r['client']['cpu_s']:.2f}",
             f"{r['client']['server_cpu_s']:.2f}", f"{records / r['logferry']['seconds']:,.0f}",
             f"{r['client']['seconds'] / r['logferry']['seconds']:.2f}x"] for r in runs]
    print_table(["plain client rec/s", "client CPU-s", "server CPU-s", "logferry rec/s", "/ client"], rows)
    client_s = statistics.median(r["client"]["seconds"] for r in runs)
    lf_s = statistics.median(r["logferry"]["seconds"] for r in runs)
    print(f"  medians: plain client {records / client_s:,.0f} rec/s; "
          f"{pipeline} {client_s / lf_s:.2f}x the plain client")
    return {"client_records_per_s": records / client_s, "ratio_to_client": client_s / lf_s}


def write_results(name: str, report: dict[str, Any]) -> Path:
    """``benchmarks/results/NAME.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"  results: {path.relative_to(REPO)}")
    return path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def family(pid: int) -> list[int]:
    """``pid`` and its live descendants (the daemon's worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:  # a thread that just ended
                continue
    return found


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (all its threads), without its descendants."""
    stat = _stat_fields(pid)
    return (int(stat[11]) + int(stat[12])) / TICKS


T = TypeVar("T")


def _of_family(pid: int, read: Callable[[int], T]) -> list[T]:
    """``read(member)`` of the process and each of its live descendants; a descendant that exited since it
    was listed (a short-lived child of the daemon's) is left out, its figures gone with it; the process
    itself must be there."""
    found = []
    for member in family(pid):
        try:
            found.append(read(member))
        except FileNotFoundError:
            if member == pid:
                raise
    return found


def _statuses(pid: int) -> list[tuple[int, str]]:
    """(pid, /proc/PID/status) of the process and its live descendants (see :func:`_of_family`)."""
    return _of_family(pid, lambda member: (member, Path(f"/proc/{member}/status").read_text()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads) and its live descendants."""
    return sum(_of_family(pid, own_cpu_seconds))


def peak_rss(pid: int) -> int:
    """Peak resident set (VmHWM), bytes, summed over the process and its live descendants
    (an upper bound of their peak together: each one's peak may come at another moment)."""
    total = 0
    for _member, text in _statuses(pid):
        hwm = re.search(r"VmHWM:\s+(\d+) kB", text)
        total += int(hwm.group(1)) * 1024 if hwm else 0
    return total


def peak_rss_shared_once(pid: int) -> int:
    """Peak resident set (bytes) of the process and its live descendants with shared pages counted once:
    the process's VmHWM plus each descendant's private part, its VmHWM less the file and shared-memory
    pages resident now (those only grow during a run).

    :func:`peak_rss` counts a parse worker's pages of the interpreter and its libraries, and of the
    memory it shares with the daemon, twice: the daemon maps the same files and writes and reads every
    page of that memory. This is the memory the machine gives them (close to the sum of their PSS)."""
    total = 0
    for member, text in _statuses(pid):
        fields = {key: int(kb) * 1024 for key, kb in re.findall(r"^(VmHWM|RssFile|RssShmem):\s+(\d+) kB", text, re.M)}
        total += fields.get("VmHWM", 0)
        if member != pid:
            total -= fields.get("RssFile", 0) + fields.get("RssShmem", 0)
    return total


def resident(pid: int) -> int:
    """Current resident set (VmRSS), bytes, of the process and its live descendants."""
    total = 0
    for _member, text in _statuses(pid):
        rss = re.search(r"VmRSS:\s+(\d+) kB", text)
        total += int(rss.group(1)) * 1024 if rss else 0
    return total


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and peak RSS (bytes) of a live process."""
    return cpu_seconds(pid), peak_rss(pid)


def context_switches(pid: int) -> tuple[int, int, int]:
    """(voluntary, involuntary, threads) summed over every thread of a live process."""
    voluntary = involuntary = threads = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # a thread that just ended
            continue
        threads += 1
        for key, value in re.findall(r"^(voluntary|nonvoluntary)_ctxt_switches:\s+(\d+)", text, re.M):
            if key == "voluntary":
                voluntary += int(value)
            else:
                involuntary += int(value)
    return voluntary, involuntary, threads


def thread_switches(pid: int) -> dict[int, tuple[str, int]]:
    """Voluntary context switches by thread id: (thread name, count)."""
    found: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            count = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", (task / "status").read_text(), re.M)
        except OSError:  # a thread that just ended
            continue
        found[int(task.name)] = (name, int(count.group(1)) if count else 0)
    return found


def open_fds(pid: int) -> int:
    """Descriptors a live process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def group_pids(pgid: int) -> Iterator[int]:
    """Live processes of a process group."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            yield int(stat.parent.name)


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of the live processes of a process group (children that ended are not counted).

    Each member counts once, by its own threads: Elasticsearch's launcher is the parent of its
    server in the same group, and counting descendants too would count the server twice."""
    total = 0.0
    for pid in group_pids(pgid):
        try:
            total += own_cpu_seconds(pid)
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------------------------
# the daemon


class DaemonProcess:
    """``python -m pipeline run -c CONFIG`` in the background, output to ``log_path``
    (``command``: another command line that runs it, e.g. with instrumentation)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        self.config, self.log_path = config, log_path
        self.command = command or [sys.executable, "-m", "pipeline", "run", "-c", str(config)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = self.ready = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        """Start and wait for its "logferry running" line; ``ready`` is when it was seen."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
        self.started = time.perf_counter()
        while READY not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.perf_counter() - self.started > timeout:
                self.stop()
                raise RuntimeError(f"daemon did not start:\n{self.log()[-3000:]}")
            time.sleep(0.005)
        self.ready = time.perf_counter()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def positions(state: Path) -> dict[str, int]:
    """Committed offset by file path, from the daemon's ``positions.json`` (empty before the first commit)."""
    path = state / "positions.json"
    if not path.exists():
        return {}
    try:
        files = orjson.loads(path.read_bytes())["files"]
    except (orjson.JSONDecodeError, KeyError):  # replaced while we read it
        return {}
    return {f["path"]: int(f["offset"]) for f in files}


def buffer_empty(state: Path, output: str) -> bool:
    """No staged or queued chunk left in an output's buffer: everything read was delivered."""
    buffer = state / "buffer" / output
    return buffer.exists() and not any(p.suffix in (".staged", ".queued") for p in buffer.iterdir())


def delivered_all(state: Path, output: str, sizes: dict[str, int]) -> bool:
    """Every file read to the given size and the output's buffer drained."""
    found = positions(state)
    return all(found.get(path, -1) >= size for path, size in sizes.items()) and buffer_empty(state, output)


# --------------------------------------------------------------------------------------------
# workloads and the floor


def floor_script() -> Path:
    """The shared yardstick when present, else our own copy."""
    shared = SHARED / "floor.py"
    return shared if shared.exists() else REPO / "benchmarks" / "floor.py"


def quiet_disk() -> None:
    """Write back every dirty page before a timed run, so no run pays for the one before it."""
    os.sync()
    time.sleep(0.5)


def durable_write_seconds(directory: Path, size: int, files: int = 2, piece: int = 8 << 20) -> float:
    """Seconds this disk takes to write ``size`` bytes to each of ``files`` files at once, fsyncing
    every ``piece``: what a durable buffer plus a durable output cost in I/O alone, whatever the code."""
    data = os.urandom(min(piece, max(size, 1)))

    def write(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            written = 0
            while written < size:
                written += os.write(fd, data[: size - written])
                os.fsync(fd)
        finally:
            os.close(fd)

    paths = [directory / f"disk-probe-{n}" for n in range(files)]
    quiet_disk()
    start = time.perf_counter()
    threads = [threading.Thread(target=write, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    for path in paths:
        path.unlink()
    return seconds


def run_floor(workload: Path, out: Path) -> dict[str, float]:
    """One run of the floor over ``workload``: its own timing, and CPU seconds of the child."""
    out.unlink(missing_ok=True)
    quiet_disk()
    start = time.perf_counter()
    ru0 = os.times()
    text = subprocess.run([sys.executable, str(floor_script()), str(workload), str(out)], check=True,
                          capture_output=True, text=True).stdout
    ru1 = os.times()
    fields = dict(re.findall(r"(\w+)=([\d.]+)", text))
    return {"seconds": float(fields["seconds"]), "cpu_s": (ru1.children_user + ru1.children_system)
            - (ru0.children_user + ru0.children_system), "wall_with_startup": time.perf_counter() - start}


def make_workload(path: Path, records: int, max_chars: int, shared: bool = False) -> None:
    """Generated records: ``pipeline.generator``, or ``../shared/bench/gen_interactions.py`` when ``shared``."""
    if shared:
        subprocess.run([sys.executable, str(SHARED / "gen_interactions.py"), "--records", str(records),
                        "--max-chars", str(max_chars), "--out", str(path)], check=True)
    else:
        generator.write(str(path), records, max_chars=max_chars)


class LineFactory:
    """Unique JSON lines cheaply: a pool of generated record bodies reused with fresh ids.

    ``line(seq, now)`` gives ``{"request_id": ..., "seq": seq, "written_at": now, "timestamp": now, <body>}``,
    so event time is the write time (the current hour's chunk) and latency can be read off each record.
    """

    def __init__(self, max_chars: int, pool: int = 2000, seed: int = 7) -> None:
        self.seed = seed
        self.bodies: list[bytes] = []
        for record in generator.records(pool, seed=seed, max_chars=max_chars):
            for key in ("request_id", "seq", "timestamp"):
                del record[key]
            self.bodies.append(orjson.dumps(record)[1:] + b"\n")  # without its opening brace

    def line(self, seq: int, now: float | None = None) -> bytes:
        at = time.time() if now is None else now
        head = b'{"request_id":"%08x-%012d","seq":%d,"written_at":%.6f,"timestamp":%.6f,' % (
            self.seed, seq, seq, at, at)
        return head + self.bodies[seq % len(self.bodies)]


def count_lines(directory: Path) -> int:
    """Lines in every file under ``directory``."""
    total = 0
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while block := f.read(1 << 24):
                    total += block.count(b"\n")
    return total


class OutputReader(threading.Thread):
    """Follows every file in a directory (poll); arrival minus ``written_at`` for each new record."""

    def __init__(self, directory: Path, poll: float) -> None:
        super().__init__(daemon=True)
        self.directory, self.poll = directory, poll
        self.offsets: dict[str, int] = {}
        self.partial: dict[str, bytes] = {}
        self.latencies: list[float] = []
        self.ids: set[str] = set()
        self.duplicates = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.read_new()
            self.stopping.wait(self.poll)
        self.read_new()

    def read_new(self) -> None:
        for entry in os.scandir(self.directory):
            offset = self.offsets.get(entry.path, 0)
            if not entry.is_file() or entry.stat().st_size <= offset:
                continue
            with open(entry.path, "rb") as f:
                f.seek(offset)
                data = f.read()
            arrived = time.time()
            self.offsets[entry.path] = offset + len(data)
            *lines, rest = (self.partial.get(entry.path, b"") + data).split(b"\n")
            self.partial[entry.path] = rest
            for line in lines:
                record = orjson.loads(line)
                if record["request_id"] in self.ids:
                    self.duplicates += 1
                    continue
                self.ids.add(record["request_id"])
                self.latencies.append(arrived - record["written_at"])
