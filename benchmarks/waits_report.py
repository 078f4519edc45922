"""From a stage trace (``waits_trace.py``) and thread samples (``waits_sampler.py``) to the wait profile
that ``profile_waits.py`` prints: where each thread's wall time went, per stage, and who waited for whom.

Every figure is clipped to the measured window (daemon ready → caught up). Intervals of one
stage may overlap (two flusher workers): their union is what counts as "time in the stage".
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from waits_sampler import Sample, ThreadSampler, kind

Span = tuple[float, float]


def union(spans: Iterable[Span]) -> list[Span]:
    """Overlapping spans merged, sorted."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(spans: list[Span]) -> float:
    """Total length of merged spans."""
    return sum(end - start for start, end in spans)


def overlap(a: list[Span], b: list[Span]) -> list[Span]:
    """Where two merged span lists overlap."""
    found, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            found.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return found


def inside(spans: list[Span], at: float) -> bool:
    """Whether ``at`` falls in one of the merged ``spans``."""
    i = bisect.bisect_right(spans, (at, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= at < spans[i][1]


@dataclass
class Profile:
    """The trace and samples of one run, clipped to the window ``lo``..``hi``."""

    trace: dict[str, Any]
    sampler: ThreadSampler
    lo: float
    hi: float
    loop_tid: int

    @property
    def wall(self) -> float:
        """The window's length, seconds."""
        return self.hi - self.lo

    def spans(self, stage: str, tid: int | None = None) -> list[Span]:
        """Merged spans of one stage (on one thread), clipped to the window."""
        return union((max(s, self.lo), min(e, self.hi)) for name, t, s, e, _ in self.trace["intervals"]
                     if name == stage and (tid is None or t == tid) and e > self.lo and s < self.hi)

    def working(self) -> dict[int, list[Span]]:
        """Per worker thread: when it ran a function handed to it (``to_thread``)."""
        found: dict[int, list[Span]] = defaultdict(list)
        for _, tid, _, begin, end, _ in self.trace["hops"]:
            found[tid].append((begin, end))
        return {tid: union(spans) for tid, spans in found.items()}

    def samples(self) -> list[Sample]:
        """The thread samples taken inside the window."""
        return [s for s in self.sampler.samples if self.lo <= s.at < self.hi]

    def tick(self) -> float:
        """Seconds one sampling round stands for."""
        rounds = len({s.at for s in self.samples()})
        return self.wall / rounds if rounds else 0.0


def classify(sample: Sample, loop_tid: int, working: dict[int, list[Span]]) -> str:
    """What a sampled thread was doing: running, GIL wait, idle, or the I/O it was blocked in."""
    what = kind(sample.syscall)
    if what != "futex":
        return what
    if sample.tid == loop_tid or inside(working.get(sample.tid, []), sample.at):
        return "GIL wait"  # the loop never blocks on a lock, nor does a worker inside a pipeline function
    return "idle (no work)"


def thread_table(p: Profile) -> list[dict[str, Any]]:
    """Per thread: on-CPU and run-queue seconds (exact), and sampled seconds per activity."""
    working, tick, names = p.working(), p.tick(), p.trace["threads"]
    by_thread: dict[int, Counter[str]] = defaultdict(Counter)
    for sample in p.samples():
        by_thread[sample.tid][classify(sample, p.loop_tid, working)] += 1
    spent = p.sampler.window()
    rows = []
    for tid in sorted(set(spent) | set(by_thread)):
        role = "event loop" if tid == p.loop_tid else names.get(str(tid), "thread")
        cpu, queued = spent.get(tid, (0.0, 0.0))
        rows.append({"tid": tid, "thread": role, "cpu_s": cpu, "waiting_for_a_core_s": queued,
                     "sampled_s": {k: n * tick for k, n in by_thread[tid].most_common()}})
    return rows


LOOP_STAGES = ["source.read_on_loop", "processor.parse_enrich", "processor.tap_publish", "committer.stage_frames",
               "committer.encode_positions", "committer.enqueue_due", "flusher.ack", "chunk.delete"]
THREAD_STAGES = ["source.read_in_thread", "source.discover", "committer.thread", "committer.thread.write_frames",
                 "committer.thread.fsync_chunks", "committer.thread.save_positions", "flusher.thread.write",
                 "flusher.thread.journal", "flusher.thread.copy", "flusher.thread.fsync_output", "chunk.delete"]
AWAITS = ["source.wait_for_room", "processor.wait_for_input", "processor.wait_for_room", "committer.wait_for_input",
          "committer.wait_for_room", "committer.commit", "committer.await_thread", "flusher.wait_for_chunk",
          "flusher.await_write", "flusher.settle", "loop.idle_in_select"]


def stage_table(p: Profile) -> list[dict[str, Any]]:
    """Per stage and side (loop / worker threads / awaited): calls, seconds in it, CPU, and the
    sampled activity of its thread meanwhile."""
    working = p.working()
    samples = p.samples()
    tick = p.tick()
    rows = []
    for side, stages in (("loop", LOOP_STAGES), ("threads", THREAD_STAGES), ("awaited", AWAITS)):
        for stage in stages:
            rows.append(_stage_row(p, side, stage, samples, working, tick))
    return [r for r in rows if r["calls"]]


def _stage_row(p: Profile, side: str, stage: str, samples: list[Sample], working: dict[int, list[Span]],
               tick: float) -> dict[str, Any]:
    on_loop = side != "threads"
    rows = [r for r in p.trace["intervals"] if r[0] == stage and (r[1] == p.loop_tid) == on_loop
            and r[3] > p.lo and r[2] < p.hi]
    spans_by_tid: dict[int, list[Span]] = defaultdict(list)
    for _, tid, start, end, _ in rows:
        spans_by_tid[tid].append((max(start, p.lo), min(end, p.hi)))
    merged = {tid: union(spans) for tid, spans in spans_by_tid.items()}
    activity: Counter[str] = Counter()
    if side != "awaited":
        for sample in samples:
            if sample.tid in merged and inside(merged[sample.tid], sample.at):
                activity[classify(sample, p.loop_tid, working)] += 1
    cpu = sum(r[4] for r in rows) if side != "awaited" else None
    return {"side": side, "stage": stage, "calls": len(rows), "seconds": length(union(s for m in merged.values()
                                                                                        for s in m)),
            "summed_s": sum(r[3] - r[2] for r in rows), "cpu_s": cpu,
            "sampled_s": {k: n * tick for k, n in activity.most_common()}}


def hop_table(p: Profile) -> list[dict[str, Any]]:
    """Per function handed to a worker thread: the hand-off in (call → start) and back (end → resumed)."""
    by_func: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for func, _, called, begin, end, resumed in p.trace["hops"]:
        if p.lo <= called < p.hi:
            by_func[func].append((begin - called, end - begin, resumed - end))
    rows = []
    for func, hops in sorted(by_func.items(), key=lambda kv: -sum(h[0] + h[2] for h in kv[1])):
        into, run, back = ([h[i] for h in hops] for i in range(3))
        rows.append({"function": func, "calls": len(hops), "in_total_s": sum(into), "in_median_ms": 1e3 *
                     statistics.median(into), "in_max_ms": 1e3 * max(into), "run_total_s": sum(run),
                     "back_total_s": sum(back), "back_median_ms": 1e3 * statistics.median(back),
                     "back_max_ms": 1e3 * max(back)})
    return rows


def callback_table(p: Profile, top: int = 8) -> dict[str, Any]:
    """The event loop's callbacks over the whole run: who blocked it, how long, how often."""
    callbacks = p.trace["callbacks"]
    total = sum(v[1] for v in callbacks.values())
    longs = [row for row in p.trace["long_callbacks"] if p.lo <= row[1] < p.hi]
    busiest = sorted(callbacks.items(), key=lambda kv: -kv[1][1])[:top]
    long_by_label: Counter[str] = Counter()
    for label, _, took in longs:
        long_by_label[label] += took
    return {"count": sum(int(v[0]) for v in callbacks.values()), "total_s": total,
            "over_5ms": {"count": len(longs), "seconds": sum(r[2] for r in longs),
                         "by_label_s": dict(long_by_label.most_common(top))},
            "busiest": [{"label": k, "count": int(v[0]), "total_s": v[1], "longest_ms": 1e3 * v[2]}
                        for k, v in busiest]}


def who_waits(p: Profile) -> dict[str, float]:
    """The event loop's idle time (in select), split by what the pipeline was waiting for then."""
    idle = p.spans("loop.idle_in_select", p.loop_tid)
    for_room = overlap(idle, p.spans("processor.wait_for_room"))
    for_input = overlap(idle, p.spans("processor.wait_for_input"))
    committer_thread = p.spans("committer.await_thread")
    flusher_write = p.spans("flusher.await_write")
    source_thread = union((c, r) for f, _, c, _, _, r in p.trace["hops"] if f.endswith("TailSource._read"))
    return {
        "loop_idle_s": length(idle),
        "processor_blocked_on_committer_s": length(for_room),
        "  committer_waiting_for_its_thread_s": length(overlap(for_room, committer_thread)),
        "processor_waiting_for_source_s": length(for_input),
        "  source_reading_in_a_thread_s": length(overlap(for_input, source_thread)),
        "processor_neither_s": length(idle) - length(for_room) - length(for_input),
        "loop_idle_while_flusher_writes_s": length(overlap(idle, flusher_write)),
        "committer_thread_busy_s": length(committer_thread),
        "flusher_write_busy_s": length(flusher_write),
        "after_last_commit_only_output_s": p.hi - _last_end(p.spans("committer.commit"), p.lo),
        "after_last_commit_loop_idle_s": length(overlap(idle, [(_last_end(p.spans("committer.commit"), p.lo), p.hi)])),
    }


def _last_end(spans: list[Span], default: float) -> float:
    return spans[-1][1] if spans else default


def concurrency(p: Profile, top: int = 6) -> dict[str, Any]:
    """How many daemon threads were running (on a core or waiting for one) per sampling round, and in
    the rounds where none was, what the threads waited for: the process's own idle core time."""
    working = p.working()
    rounds: dict[float, list[tuple[int, str]]] = defaultdict(list)
    for sample in p.samples():
        rounds[sample.at].append((sample.tid, classify(sample, p.loop_tid, working)))
    tick = p.tick()
    running: Counter[int] = Counter()
    stalled: Counter[str] = Counter()
    for threads in rounds.values():
        count = sum(1 for _, what in threads if what == "running")
        running[min(count, 3)] += 1
        if count == 0:
            stalled[_stall_key(threads, p.loop_tid, working)] += 1
    return {"running_threads_s": {("3+" if n == 3 else str(n)): c * tick for n, c in sorted(running.items())},
            "nobody_running_s": {k: c * tick for k, c in stalled.most_common(top)}}


def _stall_key(threads: list[tuple[int, str]], loop_tid: int, working: dict[int, list[Span]]) -> str:
    # Only the pipeline's own threads: the loop and the workers it hands functions to (not the
    # file-notification threads, which wait for the kernel the whole time).
    loop = next((what for tid, what in threads if tid == loop_tid), "?")
    waits = sorted({what for tid, what in threads if tid in working and not what.startswith("idle")})
    return f"loop {loop}; workers: {', '.join(waits) or 'idle'}"


def steps_per_callback(p: Profile) -> float:
    """Batches the processor parses each time the event loop runs it (the loop serves no one else meanwhile)."""
    steps = p.trace["callbacks"].get("task processor", [0])[0]
    parsed = sum(1 for r in p.trace["intervals"] if r[0] == "processor.parse_enrich")
    return parsed / steps if steps else 0.0


def build(trace: dict[str, Any], sampler: ThreadSampler, lo: float, hi: float, loop_tid: int) -> dict[str, Any]:
    """The whole profile as one JSON-ready dict."""
    p = Profile(trace, sampler, lo, hi, loop_tid)
    threads = thread_table(p)
    return {"window_s": p.wall, "process_cpu_s": sum(t["cpu_s"] for t in threads),
            "waiting_for_a_core_s": sum(t["waiting_for_a_core_s"] for t in threads),
            "machine_cpu": sampler.machine_window(), "samples": len(p.samples()),
            "sampling_rounds": len({s.at for s in p.samples()}),
            "switch_interval_s": trace["switch_interval"], "threads": threads, "stages": stage_table(p),
            "who_waits": who_waits(p), "concurrency": concurrency(p),
            "batches_per_processor_step": steps_per_callback(p), "hand_offs": hop_table(p),
            "callbacks": callback_table(p)}
