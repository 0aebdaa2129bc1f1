"""The driver's half of acknowledged messages: one connection's store updates, in order.

The session (broker.session) decides which update each acknowledged message needs
(``HoldAck``: owed until the client confirms it; ``CompleteAck``: done at delivery on protocols
without confirmations) and keeps the owed set; this file runs the updates against the hub's ack
store (broker.stores.acks) one after another, so a confirmation never overtakes the hold it
completes, hands each recorded hold back to the session (``Session.hold_recorded``), which
only then shows the message, and releases what is still owed when the connection closes. A
failed update is logged: the message is then delivered again (the store's hold expires with
it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .effects import AckUpdate, HoldAck
from .fanout.hub import Hub
from .session import Session

log = logging.getLogger("broker.connection")


class Acknowledgements:
    def __init__(self, session: Session, connection_id: str) -> None:
        self._session = session
        self._id = connection_id
        self.hub: Hub | None = None  # set before the connection joins the hub
        self._last: asyncio.Future[None] | None = None  # the latest update, run after the rest

    def update(self, update: AckUpdate | None) -> None:
        """Run ``update`` after the ones before it."""
        if update is None:
            return
        message_id, hub = update.message_id, self.hub
        assert hub is not None, "acknowledged messages reach a connection once it joins a hub"
        make: Callable[[], Awaitable[Any]] = (
            (lambda: hub.stores.acks.hold(message_id, self._id)) if isinstance(update, HoldAck)
            else (lambda: self._complete(hub, message_id)))
        previous = self._last

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await make()
            except Exception as exc:  # noqa: BLE001 - the message is then redelivered
                log.warning("conn %s: acknowledged message update failed: %s", self._id, exc)
            if isinstance(update, HoldAck):
                self._session.hold_recorded(update)  # shown once its hold is recorded

        self._last = asyncio.ensure_future(run())

    async def confirm(self, message_id: str) -> None:
        """The client confirmed ``message_id``: complete it once its hold is recorded. Raises
        what the store raises (``AckRefused``, ``BrokerUnavailable``): the client is told."""
        await self._settled()
        assert self.hub is not None
        await self._complete(self.hub, message_id)

    async def release(self, hub: Hub) -> None:
        """The connection closed: what it still owes goes back to be delivered again, and each
        sender whose message is thereby done is told."""
        await self._settled()
        owed = self._session.release_owed()
        dest = self._session.identity.destination
        if not owed or dest is None:
            return
        try:
            for message_id, sender in await hub.stores.acks.release(self._id, dest, owed):
                if sender:
                    await hub.router.confirmed(sender, message_id, dest)
        except Exception as exc:  # noqa: BLE001 - holds expire with their messages
            log.warning("conn %s: acknowledged messages not released: %s", self._id, exc)

    async def _settled(self) -> None:
        if self._last is not None:
            with contextlib.suppress(Exception):
                await self._last

    async def _complete(self, hub: Hub, message_id: str) -> None:
        dest = self._session.identity.destination
        if dest is None:
            return
        done, sender = await hub.stores.acks.confirm(message_id, dest, self._id)
        self._session.completed(message_id)
        if done and sender:
            await hub.router.confirmed(sender, message_id, dest)
