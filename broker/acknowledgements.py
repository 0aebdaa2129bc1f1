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

from .effects import AckUpdate, HoldAck
from .fanout.hub import Hub
from .session import Session
from .stores.acks import AckStore

log = logging.getLogger("broker.connection")


class Acknowledgements:
    __slots__ = ("_session", "_id", "hub", "_last")

    def __init__(self, session: Session, connection_id: str) -> None:
        self._session = session
        self._id = connection_id
        self.hub: Hub | None = None  # set before the connection joins the hub
        self._last: asyncio.Future[None] | None = None  # the latest update, run after the rest

    def update(self, update: AckUpdate | None) -> None:
        """Run ``update`` after the ones before it."""
        if update is None:
            return
        previous = self._last

        async def run() -> None:
            await _finished(previous)
            hold = update if isinstance(update, HoldAck) else None
            try:
                if hold is not None:
                    await self._store().hold(hold.message_id, self._id)
                else:
                    await self._complete(update.message_id)
            except Exception as exc:  # noqa: BLE001 - the message is then redelivered
                log.warning("conn %s: acknowledged message update failed: %s", self._id, exc)
            if hold is not None:
                self._session.hold_recorded(hold)  # shown once its hold is recorded

        self._last = asyncio.ensure_future(run())

    async def confirm(self, message_id: str) -> None:
        """The client confirmed ``message_id``: complete it once its hold is recorded. Raises
        what the store raises (``AckRefused``, ``BrokerUnavailable``): the client is told."""
        await _finished(self._last)
        await self._complete(message_id)

    async def release(self) -> None:
        """The connection closed: what it still owes goes back to be delivered again, and each
        sender whose message is thereby done is told."""
        await _finished(self._last)
        owed = self._session.release_owed()
        dest = self._session.identity.destination
        if not owed or dest is None:
            return
        try:
            for message_id, sender in await self._store().release(self._id, dest, owed):
                await self._confirmed(sender, message_id, dest)
        except Exception as exc:  # noqa: BLE001 - holds expire with their messages
            log.warning("conn %s: acknowledged messages not released: %s", self._id, exc)

    def _store(self) -> AckStore:
        assert self.hub is not None, "acknowledged messages reach a connection once it joins a hub"
        return self.hub.stores.acks

    async def _complete(self, message_id: str) -> None:
        dest = self._session.identity.destination
        if dest is None:
            return
        done, sender = await self._store().confirm(message_id, dest, self._id)
        self._session.completed(message_id)
        if done:
            await self._confirmed(sender, message_id, dest)

    async def _confirmed(self, sender: str | None, message_id: str, dest: str) -> None:
        """Tell the sender its message is complete (a sender without a login hears nothing)."""
        if sender and self.hub is not None:
            await self.hub.router.confirmed(sender, message_id, dest)


async def _finished(update: asyncio.Future[None] | None) -> None:
    """Until ``update`` has run (its failure was logged where it ran)."""
    if update is not None:
        with contextlib.suppress(Exception):
            await update
