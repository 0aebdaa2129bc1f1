"""broker.outbox.Outbox: written in order, synchronously while the transport takes frames, one
task only while it is full; bounded in bytes; a mark is reported once its frame is written."""

from __future__ import annotations

import asyncio

from broker.outbox import Outbox


class Socket:
    """A writer whose buffer is full while ``full`` is set (a reader that stopped reading)."""

    def __init__(self) -> None:
        self.written: list[str | bytes] = []
        self.full = False
        self.room = asyncio.Event()
        self.dead = False

    def write_now(self, frame: str | bytes) -> bool:
        if self.dead:
            raise ConnectionResetError
        self.written.append(frame)
        return not self.full

    async def writable(self) -> None:
        self.waiter = asyncio.ensure_future(self.room.wait())
        await self.waiter


def make(socket: Socket, limit: int = 100) -> tuple[Outbox[str], list[int], list[str]]:
    overflows: list[int] = []
    marks: list[str] = []
    box: Outbox[str] = Outbox(socket, limit, on_overflow=overflows.append,
                              on_written=marks.append)
    return box, overflows, marks


async def test_writes_at_once_without_a_task() -> None:
    socket = Socket()
    box, overflows, marks = make(socket)
    tasks = len(asyncio.all_tasks())
    assert box.push("a", "m1") and box.push(b"b")
    assert socket.written == ["a", b"b"] and marks == ["m1"]
    assert len(asyncio.all_tasks()) == tasks and box.queued_bytes == 0 and overflows == []


async def test_a_full_transport_queues_and_marks_wait_until_written() -> None:
    socket = Socket()
    box, overflows, marks = make(socket)
    socket.full = True
    box.push("a", "m1")  # handed over, but the transport is full: not yet written
    box.push("bb", "m2")
    box.push("ccc")
    assert socket.written == ["a"] and marks == [] and box.queued_bytes == 5
    socket.full = False
    socket.room.set()
    await box.flush()
    assert socket.written == ["a", "bb", "ccc"] and marks == ["m1", "m2"]
    assert box.queued_bytes == 0 and overflows == []


async def test_overflow_drops_what_is_queued_and_says_how_much() -> None:
    socket = Socket()
    box, overflows, marks = make(socket, limit=10)
    socket.full = True
    box.push("x")  # written (the transport buffers it); the rest queues
    assert box.push("12345")
    assert box.push("12345")  # 10 bytes queued: at the bound, not over it
    assert not box.push("1")
    assert overflows == [3] and box.queued_bytes == 0


async def test_close_stops_a_write_that_waits() -> None:
    socket = Socket()
    box, _overflows, marks = make(socket)
    socket.full = True
    box.push("a", "m1")
    box.push("b")
    box.close()
    await asyncio.wait_for(box.flush(), 1)
    assert not box.push("c") and socket.written == ["a"] and marks == []


async def test_a_wait_cancelled_from_outside_does_not_stop_the_writing() -> None:
    socket = Socket()
    box, overflows, marks = make(socket)
    socket.full = True
    box.push("a", "m1")
    box.push("b")
    await asyncio.sleep(0)  # the outbox's task now waits in writable()
    socket.waiter.cancel()  # what the transport awaited is cancelled (not by close())
    for _ in range(3):
        await asyncio.sleep(0)  # the cancellation reaches the outbox's task
    socket.full = False
    assert box.push("c")  # writes again: what was queued, then this
    assert socket.written == ["a", "b", "c"] and marks == ["m1"] and box.queued_bytes == 0


async def test_a_dead_transport_ends_the_writing_not_the_caller() -> None:
    socket = Socket()
    box, overflows, _marks = make(socket)
    socket.dead = True
    assert box.push("a")  # the failure is logged; the close path follows from the transport
    await box.flush()
    assert socket.written == [] and overflows == []


async def test_a_push_from_within_a_write_keeps_the_order() -> None:
    socket = Socket()
    box, _overflows, _marks = make(socket)
    original = socket.write_now

    def write_now(frame: str | bytes) -> bool:
        ready = original(frame)
        if frame == "a":
            box.push("c")  # e.g. a delivery caused by the write itself
        return ready

    socket.write_now = write_now  # type: ignore[method-assign]
    box.push("a")
    box.push("b")
    assert socket.written == ["a", "c", "b"]


async def test_a_frame_over_the_bound_overflows_even_with_nothing_queued() -> None:
    socket = Socket()
    box, overflows, _marks = make(socket, limit=10)
    assert not box.push("x" * 11)  # never handed to the transport, however idle
    assert socket.written == [] and overflows == [1] and box.queued_bytes == 0
    assert box.push("y")  # the bound judged that frame, not the outbox


async def test_a_close_from_within_a_write_drops_what_is_queued() -> None:
    socket = Socket()
    box, _overflows, _marks = make(socket)
    socket.full = True
    box.push("a")
    box.push("b")
    box.push("c")
    original = socket.write_now

    def write_now(frame: str | bytes) -> bool:
        if frame == "b":
            box.close()  # e.g. the transport's close reached the driver meanwhile
        return original(frame)

    socket.write_now = write_now  # type: ignore[method-assign]
    socket.full = False
    socket.room.set()
    await box.flush()
    assert socket.written == ["a", "b"]


async def test_on_writing_tells_each_mark_just_before_its_frame_is_handed_over() -> None:
    """A transport that writes positions with frames (SSE event ids) learns a frame's marks
    at the moment that frame is handed to it, in write order, queued behind a full transport
    or not."""
    socket = Socket()
    box, _overflows, marks = make(socket)
    told: list[tuple[str, int]] = []
    box.on_writing = lambda mark: told.append((mark, len(socket.written)))
    box.push("a", "m1")
    box.push("b")
    assert told == [("m1", 0)]  # before "a" was written
    socket.full = True
    box.push("c")  # handed over, the transport is full from now on
    box.push("d", "m2")
    box.push("e", "m3")
    assert told == [("m1", 0)]  # "d" waits in the queue
    socket.full = False
    socket.room.set()
    await box.flush()
    assert socket.written == ["a", "b", "c", "d", "e"]
    assert told == [("m1", 0), ("m2", 3), ("m3", 4)] and marks == ["m1", "m2", "m3"]
