"""The ticket store: the ids of the connection tickets already used, each kept as long as its
ticket is still accepted, so a ticket opens one connection in the whole cluster
(``broker.tickets``, docs/protocol.md "Connection tickets").

``RedisTickets`` keeps ``P:ticket:<id>``: one ``SET NX PX`` per use, expiring with the ticket,
so two processes presenting one ticket at once cannot both have it. ``MemoryTickets``: the
same in one process's memory (the in-memory layer), forgotten at expiry.
"""

from __future__ import annotations

import heapq
import time
from typing import Protocol

from .redis import RedisClient


class TicketStore(Protocol):
    async def use(self, ticket_id: str, ttl: float) -> bool:
        """True the first time ``ticket_id`` is used within ``ttl`` seconds (its remaining
        life), False for every later use."""
        ...


class MemoryTickets:
    def __init__(self) -> None:
        self._used: set[str] = set()
        self._expiries: list[tuple[float, str]] = []  # a heap: the next one to forget first

    async def use(self, ticket_id: str, ttl: float) -> bool:
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            self._used.discard(heapq.heappop(self._expiries)[1])
        if ticket_id in self._used:
            return False
        self._used.add(ticket_id)
        heapq.heappush(self._expiries, (now + ttl, ticket_id))
        return True


class RedisTickets:
    def __init__(self, client: RedisClient) -> None:
        self.client = client

    async def use(self, ticket_id: str, ttl: float) -> bool:
        name = self.client.key("ticket", ticket_id)
        return bool(await self.client.call(
            self.client.redis.set(name, b"1", nx=True, px=max(int(ttl * 1000), 1))))
