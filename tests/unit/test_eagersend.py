"""broker.eagersend.EagerSend: an ASGI send that completes at once makes no task; one that
suspends goes on in a task that ``wait`` awaits, and its error is raised there."""

from __future__ import annotations

import asyncio

import pytest

from broker.eagersend import EagerSend


async def test_a_send_that_does_not_suspend_completes_without_a_task() -> None:
    sent: list[str] = []

    async def send() -> None:
        sent.append("frame")

    tasks = len(asyncio.all_tasks())
    eager = EagerSend()
    assert eager.step(send()) is True
    assert sent == ["frame"] and len(asyncio.all_tasks()) == tasks
    await eager.wait()  # nothing suspended: returns at once


async def test_a_send_that_suspends_finishes_in_a_task() -> None:
    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def send() -> None:
        steps.append("started")
        await room  # backpressure
        await asyncio.sleep(0)  # a bare yield as well
        steps.append("written")

    eager = EagerSend()
    assert eager.step(send()) is False
    assert steps == ["started"]
    waiting = asyncio.ensure_future(eager.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    room.set_result(None)
    await waiting
    assert steps == ["started", "written"]
    await eager.wait()  # once finished, nothing is pending


async def test_errors_reach_the_caller() -> None:
    async def fails_at_once() -> None:
        raise ConnectionResetError("gone")

    eager = EagerSend()
    with pytest.raises(ConnectionResetError):
        eager.step(fails_at_once())

    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails_later() -> None:
        await room

    assert eager.step(fails_later()) is False
    room.set_exception(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        await eager.wait()


async def test_cancelling_the_wait_closes_the_send() -> None:
    closed: list[bool] = []

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never written
        finally:
            closed.append(True)

    eager = EagerSend()
    assert eager.step(send()) is False
    waiting = asyncio.ensure_future(eager.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert closed == [True]
