"""An ASGI send stepped once by hand, finished in a task only if it suspends.

The outbox writes synchronously for as long as the transport takes frames
(``broker.outbox.Writer.write_now``), so a broadcast creates no task per delivery: one task
per delivery was a quarter of the CPU of a broadcast (docs/performance.md). But the ASGI
``send`` is a coroutine. Under uvicorn and daphne it almost always completes without
suspending, so ``EagerSend.step`` runs it up to its first suspension, here, by hand: if it
finished, the frame is written and no task was made. Only a send that suspends (backpressure)
goes on in a task, which ``wait`` awaits (``Writer.writable``).

This is the one place that knows ASGI's send is a coroutine; the WebSocket adapter
(``broker.consumers``) owns one ``EagerSend`` per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class EagerSend:
    """One connection's send in flight: at most one that suspended, awaited by ``wait``."""
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: asyncio.Future[None] | None = None  # a send that suspended

    def step(self, send: Coroutine[Any, Any, None]) -> bool:
        """Step ``send`` once. True: it completed (an error it raised is raised here); False:
        it suspended and goes on in a task, which ``wait`` awaits."""
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return True
        except BaseException:
            send.close()
            raise
        self._pending = asyncio.ensure_future(_finish(send, waiting_on))
        return False

    async def wait(self) -> None:
        """Until the send that suspended is finished (at once if none did); its error is
        raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending


async def _finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive a coroutine that ``step`` stepped once to its end, as a Task would: wait for
    what it waits on, then resume it (an awaited future's result or error reaches it on
    resume). Cancelled: the coroutine is closed (its ``finally`` blocks run)."""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                await asyncio.wait([waiting_on])
        except asyncio.CancelledError:
            coro.close()
            raise
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
