"""ReadPacer: when the tail source's loop is woken for writes, and when the write descriptor is on the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipeline.sources.tail.pacing import READ_EVERY, ReadPacer


class FakeWatcher:
    """Records the pacer's calls; ``queued`` says how many write batches the next polls find."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False
        self.queued = 0
        self.woken = asyncio.Event()
        self.on_poll: Callable[[], None] = lambda: None

    def wake(self) -> None:
        self.calls.append("wake")
        self.woken.set()

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def poll(self) -> None:
        self.calls.append("poll")
        if self.queued:
            self.queued -= 1
            self.on_poll()


def pacer_for(watcher: FakeWatcher) -> ReadPacer:
    pacer = ReadPacer(watcher.wake, watcher.pause, watcher.resume, watcher.poll, time.monotonic)
    watcher.on_poll = pacer.written  # what the watcher's read does for a followed file's write
    return pacer


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_a_hot_file_is_read_from_the_timer_without_going_back_on_the_loop() -> None:
    async def scenario() -> list[str]:
        watcher = FakeWatcher()
        pacer = pacer_for(watcher)
        watcher.queued = 3  # three more paced reads find writes, the fourth finds none
        pacer.written()  # a cold file: woken at once, then paced
        assert watcher.calls == ["wake", "pause"]
        await until(lambda: not watcher.paused)
        return watcher.calls

    calls = asyncio.run(scenario())
    # Each paced read that found writes woke the loop and left the descriptor off it;
    # the first one that found nothing put it back.
    assert calls == ["wake", "pause"] + ["poll", "wake"] * 3 + ["poll", "resume"]


def test_a_write_soon_after_a_read_is_woken_for_at_the_timer_even_if_nothing_else_came() -> None:
    async def scenario() -> tuple[list[str], float]:
        watcher = FakeWatcher()
        pacer = pacer_for(watcher)
        pacer.read_done()  # the loop has just read
        started = time.monotonic()
        pacer.written()  # its event is consumed: the read is owed
        assert watcher.calls == ["pause"]
        await asyncio.wait_for(watcher.woken.wait(), 2.0)
        waited = time.monotonic() - started
        await until(lambda: not watcher.paused)
        return watcher.calls, waited

    calls, waited = asyncio.run(scenario())
    assert waited >= READ_EVERY * 0.9
    assert calls == ["pause", "poll", "wake", "poll", "resume"]


def test_a_foreign_open_puts_the_descriptor_back_and_every_write_wakes() -> None:
    async def scenario() -> list[str]:
        watcher = FakeWatcher()
        pacer = pacer_for(watcher)
        pacer.written()
        pacer.opened()  # logrotate's copy starts: read now and at every write
        pacer.written()
        pacer.written()
        await asyncio.sleep(READ_EVERY * 3)  # the cancelled timer must not fire
        return watcher.calls

    calls = asyncio.run(scenario())
    assert calls == ["wake", "pause", "resume", "wake", "wake", "wake"]
