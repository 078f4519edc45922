"""When a hot file is read and when its lines are emitted: soon, but not once per write.

Two measured costs pull apart (benchmarks/latency.py, benchmarks/steady.py). Bytes must
leave a file soon after their write: copytruncate's truncate takes whatever is still
unread, and the issue's bound is 3 lines per rotation at 5,000 lines/s, i.e. reads well
under a millisecond behind the writer. But reading at every inotify event costs a wake-up
per write, and emitting every read as its own batch costs a transform pass and a commit
(with its fsyncs) per write: at 1,000 lines/s that took the daemon from 6 % of a core to
24-30 % (steady.py, load ~9).

* :class:`ReadPacer`: a write to a cold file is read at once; then write events are left
  queued in the kernel for :data:`READ_EVERY`, so one wake-up reads a few writes. A
  followed file opened by someone else (``IN_OPEN``, on the descriptor that is always
  read: logrotate starting its copy, any copier) makes reads follow every write for
  :data:`URGENT_FOR`, which covers the copy, its fsync and the truncate: lines written
  after the copy exist only in the original until the truncate.
* :class:`HeldLines`: whole lines read from a hot file are held for up to
  :data:`EMIT_EVERY` after its previous batch and emitted together; a file written once
  in a while is emitted at once (its previous batch is long past).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.sources.tail.reader import ReadResult

READ_EVERY = 0.005  # seconds between two reads while writes keep coming
URGENT_FOR = 1.0  # seconds of reads at every write after a foreign open of a followed file
EMIT_EVERY = 0.1  # seconds between two batches of one file while it is hot


@dataclass
class HeldLines:
    """Whole lines read from one file, contiguous, with the fingerprint they were read under.

    >>> held = HeldLines()
    >>> held.add(ReadResult(0, 4, b"a\\nb\\n"), "fp", 4); held.add(ReadResult(4, 6, b"c\\n"), "fp", 4)
    >>> held.follows(ReadResult(6, 8, b"d\\n")), held.follows(ReadResult(0, 2, b"e\\n"))
    (True, False)
    >>> held.take()
    (0, 6, b'a\\nb\\nc\\n', 'fp', 4)
    >>> bool(held)
    False
    """

    start: int = 0
    end: int = 0
    size: int = 0
    fp: str = ""
    fp_len: int = 0
    last_emit: float = float("-inf")
    _pieces: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self._pieces)

    def follows(self, result: ReadResult) -> bool:
        """Whether ``result`` continues the held lines (nothing held: yes)."""
        return not self._pieces or result.start == self.end

    def add(self, result: ReadResult, fp: str, fp_len: int) -> None:
        """Hold a read's lines (it must follow the held ones)."""
        if not self._pieces:
            self.start, self.fp, self.fp_len = result.start, fp, fp_len
        self._pieces.append(result.data)
        self.end = result.end
        self.size += len(result.data)

    def take(self) -> tuple[int, int, bytes, str, int]:
        """Everything held, as (start, end, data, fingerprint, fingerprint length); empties the hold."""
        data = b"".join(self._pieces)
        self._pieces.clear()
        self.size = 0
        return self.start, self.end, data, self.fp, self.fp_len

    def due(self, now: float) -> float:
        """Seconds until the held lines should be emitted (0 or less: now)."""
        return self.last_emit + EMIT_EVERY - now



class ReadPacer:
    """Decides when the source's loop wakes up for a write (see the module doc).

    While a file is hot the write descriptor stays off the event loop and a timer reads
    it every :data:`READ_EVERY` (``poll``): taking the descriptor off the loop and putting
    it back at every paced read (two ``epoll_ctl`` and asyncio's reader bookkeeping) was
    the largest single cost of a hot file, 40 % of the event loop's busy time at 1,000
    lines/s (py-spy). The descriptor goes back on the loop when a paced read finds
    nothing new: the next write to the now cold file is then seen at once.
    """

    def __init__(self, wake: Callable[[], None], pause: Callable[[], None], resume: Callable[[], None],
                 poll: Callable[[], None], monotonic: Callable[[], float]) -> None:
        self._wake, self._pause, self._resume, self._poll = wake, pause, resume, poll
        self._monotonic = monotonic
        self._last_read = float("-inf")
        self._urgent_until = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._owed = False  # a write was seen and its read left to the timer

    def read_done(self) -> None:
        """The loop has just read the files it was woken for."""
        self._last_read = self._monotonic()

    def opened(self) -> None:
        """A followed file was opened by someone else: read now, then at every write for a while."""
        self._urgent_until = self._monotonic() + URGENT_FOR
        self.cancel()
        self._resume()
        self._wake()

    def written(self) -> None:
        """A followed file grew: wake the loop now, then leave write events queued a while."""
        now = self._monotonic()
        if now < self._urgent_until:
            self._wake()
            return
        if self._timer is not None:
            self._owed = True  # the paced read due next takes this write too
            return
        wait = self._last_read + READ_EVERY - now
        if wait > 0:
            self._owed = True
        else:
            self._wake()
            wait = READ_EVERY
        self._pause()
        self._timer = asyncio.get_running_loop().call_later(wait, self._fire)

    def _fire(self) -> None:
        # The timer stays set while the write events queued meanwhile are read, so written()
        # only notes that a read is owed.
        self._poll()
        if self._owed:
            self._owed = False
            self._wake()
            assert self._timer is not None
            self._timer = asyncio.get_running_loop().call_later(READ_EVERY, self._fire)
        else:
            self._timer = None
            self._resume()  # nothing new: the file is cold, its next write is seen at once

    def cancel(self) -> None:
        """Drop a pending paced wake-up."""
        self._owed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
