"""The outbox: the frames queued for one connection, written in order, bounded in bytes.

Replies and deliveries alike go through one outbox, so a reply and the deliveries around it
keep their order. What it decides:

- **The bound.** Frames queued and not yet handed to the transport are counted in bytes; past
  ``limit`` the outbox drops them all and calls ``on_overflow`` (the driver closes the
  connection as ``slow``, 4008): a client that does not read must not hold the process's
  memory. A frame handed to the transport is no longer counted (the transport buffers it).
- **Marks.** A frame may carry a mark (a subscription and an offset); once the transport has
  taken the frame, ``on_written(mark)`` is called, in order, so a resume position moves only
  past frames actually written, never past frames merely queued.
- **Writing without a task.** ``push`` writes at once, synchronously, for as long as the
  transport takes frames without waiting (``Writer.write_now`` returns True): under load this
  is every delivery, and one task per delivery was a quarter of a broadcast's CPU
  (docs/performance.md). Only when the transport says it is full does one task wait for it to
  become writable (``Writer.writable``) and then write on; the frames pushed meanwhile queue.

The outbox knows nothing of frames' meaning, of codecs or of subscriptions: a mark is whatever
the driver gave it back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("broker.outbox")

M = TypeVar("M")


class Writer(Protocol):
    """The write side of a transport, as the outbox drives it."""

    def write_now(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the transport without waiting. True: it can take the next frame at
        once; False: the frame is on its way, and ``writable()`` must be awaited (it returns once
        this frame is written and the transport takes more). Raises for a dead transport."""
        ...

    async def writable(self) -> None:
        """Wait until the frame of a ``write_now`` that returned False is written and the
        transport takes more. Raises for a dead transport."""
        ...


class Outbox(Generic[M]):
    __slots__ = (
        "_writer", "_limit", "_on_overflow", "_on_written", "_name", "_frames", "_bytes",
        "_pushed", "_written", "_marks", "_waiting", "_writing", "_closed", "on_writing",
    )

    def __init__(self, writer: Writer, limit: int, *, on_overflow: Callable[[int], None],
                 on_written: Callable[[M], None], name: str = "") -> None:
        """``limit``: bytes queued past which the outbox overflows; ``on_overflow(n)``: called
        with the number of frames dropped; ``on_written(mark)``: a marked frame was written."""
        self._writer = writer
        self._limit = limit
        self._on_overflow = on_overflow
        self._on_written = on_written
        self._name = name  # for the log
        # Both queues are made when first needed: an idle connection holds none (a deque is
        # 600 bytes; bench/memprofile.py).
        self._frames: deque[str | bytes] | None = None
        self._bytes = 0
        self._pushed = 0  # frames queued so far
        self._written = 0  # frames written so far
        self._marks: deque[tuple[int, M]] | None = None  # (number of the frame, its mark)
        self._waiting: asyncio.Task[None] | None = None  # waits for writable(), then writes
        self._writing = False  # inside _write_out (a push from within a write joins its loop)
        self._closed = False
        # Told each mark of a frame just before the frame is handed to the transport (None:
        # nobody asks; broker.sse writes positions as event ids).
        self.on_writing: Callable[[M], None] | None = None

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet handed to the transport."""
        return self._bytes

    def push(self, frame: str | bytes, mark: M | None = None) -> bool:
        """Queue ``frame`` (with ``mark``) and write what the transport takes now. Never blocks.
        False: the outbox overflowed (everything queued is dropped), or is closed."""
        if self._closed:
            return False
        self._pushed += 1
        if mark is not None:
            if self._marks is None:
                self._marks = deque()
            self._marks.append((self._pushed, mark))
        size = len(frame)
        if not self._frames and self._waiting is None and not self._writing \
                and size <= self._limit:
            # nothing ahead of it: written at once, never queued (then what was pushed from
            # within that write, if anything)
            if self._write(frame) and self._frames:
                self._write_out()
            return True
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        self._bytes += size
        if self._bytes > self._limit:
            dropped = len(self._frames)
            self._frames.clear()
            self._bytes = 0
            self._on_overflow(dropped)
            return False
        if self._waiting is None and not self._writing:
            self._write_out()
        return True

    def _write_out(self) -> None:
        """Hand frames to the transport while it takes them; when it is full, leave the rest
        to one task that waits until it is writable."""
        frames = self._frames
        while frames and self._waiting is None and not self._closed:
            frame = frames.popleft()
            self._bytes -= len(frame)
            if not self._write(frame):
                return

    def _write(self, frame: str | bytes) -> bool:
        """Hand one frame to the transport. True: it takes the next at once; False: it failed
        or is full (then one task waits for it to be writable)."""
        if self.on_writing is not None and self._marks:
            self._tell_writing()
        self._writing = True
        try:
            ready = self._writer.write_now(frame)
        except Exception as exc:  # noqa: BLE001 - a dead transport: the close path follows
            log.info("conn %s: write failed: %s", self._name, type(exc).__name__)
            return False
        finally:
            self._writing = False
        if not ready:
            self._waiting = asyncio.ensure_future(self._wait_then_write())
            return False
        self._frame_written()
        return True

    def _tell_writing(self) -> None:
        """``on_writing`` each mark of the frame about to be handed to the transport."""
        assert self.on_writing is not None and self._marks is not None
        number = self._written + 1  # frames are handed over in order, one at a time
        for n, mark in self._marks:
            if n > number:
                return
            if n == number:
                self.on_writing(mark)

    def _frame_written(self) -> None:
        self._written += 1
        marks = self._marks
        while marks and marks[0][0] <= self._written:
            self._on_written(marks.popleft()[1])

    async def _wait_then_write(self) -> None:
        try:
            await self._writer.writable()
        except asyncio.CancelledError:
            # By close() (which let go of it already), the loop shutting down, or whatever the
            # transport awaited being cancelled: the next push writes again (else every frame
            # after it would queue until the outbox overflowed).
            if self._waiting is asyncio.current_task():
                self._waiting = None
                self._frame_written()  # the transport took it before it said it was full
            raise
        except Exception as exc:  # noqa: BLE001 - a dead transport: the close path follows
            self._waiting = None
            log.info("conn %s: write failed: %s", self._name, type(exc).__name__)
            return
        self._waiting = None
        self._frame_written()
        if not self._closed:
            self._write_out()

    async def flush(self) -> None:
        """Wait until every frame queued is handed to the transport (or a write failed)."""
        while (waiting := self._waiting) is not None:
            await asyncio.wait([waiting])
            if self._waiting is waiting:  # cancelled before it ran: nothing writes any more
                self._waiting = None

    def close(self) -> None:
        """Queue nothing more, drop what is queued and stop a write that waits (a reader that
        stopped reading must not keep the close waiting)."""
        self._closed = True
        self._frames = None
        self._bytes = 0
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
