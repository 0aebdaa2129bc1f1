"""broker.fanout.coalesce: calls made while a batch is in flight go together in the next one
(the sender's pipelined PUBLISHes and the mask reads rely on it). Real asyncio, a real
function as the batch."""

from __future__ import annotations

import asyncio

import pytest

from broker.coalesce import Coalesced


class Batches:
    """A batch function that records its batches and holds each until released."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.release = asyncio.Event()
        self.failing: set[str] = set()  # a batch holding one of them fails

    async def __call__(self, items: list[str]) -> list[str]:
        self.seen.append(list(items))
        await self.release.wait()
        if self.failing & set(items):
            raise RuntimeError("down")
        return [item.upper() for item in items]


async def test_calls_of_one_moment_go_in_one_batch_in_order():
    run = Batches()
    run.release.set()
    together = Coalesced(run)
    assert await asyncio.gather(*(together(x) for x in "abcde")) == list("ABCDE")
    assert run.seen == [list("abcde")]


async def test_calls_made_while_a_batch_is_in_flight_wait_for_the_next():
    run = Batches()
    together = Coalesced(run)
    first = together.soon("a")
    await asyncio.sleep(0)
    assert run.seen == [["a"]]  # in flight
    later = [together.soon(x) for x in "bc"]
    await asyncio.sleep(0.01)
    assert run.seen == [["a"]]  # b and c wait: their batch starts after a's ends
    run.release.set()
    assert await first == "A"
    assert [await f for f in later] == ["B", "C"]
    assert run.seen == [["a"], ["b", "c"]]


async def test_a_failed_batch_fails_its_callers_only():
    run = Batches()
    run.failing = {"a"}
    together = Coalesced(run)
    first = [together.soon(x) for x in "ab"]
    await asyncio.sleep(0)
    second = together.soon("c")
    run.release.set()
    for f in first:
        with pytest.raises(RuntimeError, match="down"):
            await f
    assert await second == "C"
    assert run.seen == [["a", "b"], ["c"]]


async def test_a_caller_that_goes_away_does_not_cancel_its_batch():
    run = Batches()
    together = Coalesced(run)
    gone = together.soon("a")
    stays = together.soon("b")
    gone.cancel()  # what awaiting it in a task that is cancelled does
    run.release.set()
    assert await stays == "B"
    assert run.seen == [["a", "b"]]
