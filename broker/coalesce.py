"""Calls that go together: one batch in flight, and the calls made meanwhile wait for the next.

``Coalesced(run)`` is called with one item and answers that item's result; ``run`` gets the
items of every call made since the last batch started, and answers one result per item, in
order. The next batch starts when the one in flight ends, so under load a batch holds all that
came in during one round trip, and each call waits at most for two. A batch starts after every
call it holds was made (what ``broker.fanout.masks`` relies on), and batches run in the order
of their calls (what ``broker.fanout.sender`` and the registry's group commit,
``broker.fanout.upkeep``, rely on).

An exception from ``run`` is every caller's of that batch. A caller that goes away (cancelled)
does not cancel the batch: its item is carried out all the same. ``soon(item)`` puts the item in
the next batch at once and returns the future of its result, so a caller can do other work (send
while it reads) before it awaits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalesced(Generic[Item, Result]):
    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._run = run
        self._items: list[Item] = []
        self._waiting: list[asyncio.Future[Result]] = []
        self._task: asyncio.Future[None] | None = None

    async def __call__(self, item: Item) -> Result:
        return await self.soon(item)

    def soon(self, item: Item) -> asyncio.Future[Result]:
        """``item``'s result, to await: its batch starts after this call."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._items.append(item)
        self._waiting.append(future)
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        waiting: list[asyncio.Future[Result]] = []
        try:
            while self._items:
                items, waiting = self._items, self._waiting
                self._items, self._waiting = [], []
                try:
                    results = await self._run(items)
                except Exception as exc:  # noqa: BLE001 - every caller's, whatever it is
                    for future in waiting:
                        if not future.done():  # not cancelled by its caller
                            future.set_exception(exc)
                else:
                    for future, result in zip(waiting, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._task = None
            for future in waiting + self._waiting:  # cancelled itself (the loop is closing)
                if not future.done():
                    future.cancel()
            self._items, self._waiting = [], []


def _retrieve(future: asyncio.Future[Result]) -> None:
    """A batch whose callers all went away must not log its error as never retrieved."""
    if not future.cancelled():
        future.exception()
