"""The tap's hub: a viewer's stream ends when the pipeline stops, also for one that connects just then."""

from __future__ import annotations

from pipeline.runtime.tap import END, TapHub


def test_closing_ends_every_viewers_stream_even_a_full_one() -> None:
    hub = TapHub({})
    idle, full = hub.subscribe([], set()), hub.subscribe(["ai.**"], set())
    for n in range(full.queue.maxsize):
        full.queue.put_nowait(b"batch %d\n" % n)
    hub.close()
    assert idle.queue.get_nowait() == END
    drained = [full.queue.get_nowait() for _ in range(full.queue.qsize())]
    assert drained[-1] == END and len(drained) == full.queue.maxsize


def test_a_viewer_that_connects_after_the_close_ends_at_once_instead_of_waiting_forever() -> None:
    hub = TapHub({})
    hub.close()
    late = hub.subscribe([], set())  # its request was read as the pipeline stopped
    assert late.queue.get_nowait() == END
    assert not hub.viewers
