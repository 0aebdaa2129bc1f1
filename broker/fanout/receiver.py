"""The seam between the hub and a connection: what the hub hands a connection, typed.

The hub matches subscriptions, dedupes copies and hands each delivery to the connection that
owns the subscription (``Subscription.owner``) or the destination. It never encodes a frame,
never reads a codec and never decides holding, replaying or positions: the connection does
(``broker.connection`` implements ``Receiver``). So a new transport or dialect never touches
fan-out, and the delivery rules live with the per-connection state they read.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..disconnect import Disconnect
from ..identity import Identity
from ..messages import Confirmed, DirectMessage, Notify, PresenceEvent, Trigger
from ..subscription import Subscription


class Receiver(Protocol):
    id: str
    connected_at: float  # wall-clock seconds of its accept

    @property
    def identity(self) -> Identity: ...

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None:
        """One trigger for one of this connection's subscriptions. ``room_key``: the room it
        is shown under (the subscription's own room when the trigger was recorded there);
        ``offset``: that room's history offset if recorded, else None. The connection
        decides: hold it (a seam or resync buffer), drop it (already replayed), or encode and
        queue it with a mark."""
        ...

    def deliver_message(self, message: DirectMessage) -> None:
        """To an owner of ``message.to`` (acknowledged or not: ``message.ack``)."""
        ...

    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None:
        """A watcher's copy (``sub`` watches ``message.room``)."""
        ...

    def deliver_confirmed(self, event: Confirmed) -> None: ...

    def deliver_presence(self, sub: Subscription, event: PresenceEvent) -> None:
        """Someone joined or left the room of ``sub`` (which asked for presence)."""
        ...

    def hold_live(self) -> None:
        """The process's Redis subscription broke: live deliveries may be missing."""
        ...

    async def resync(self) -> None:
        """... and is whole again: recover what was missed."""
        ...

    def close_soon(self, why: Disconnect) -> None: ...

    # ---- the server API (broker.api)

    def deliver_notice(self, notice: Notify) -> None:
        """Data from the backend: to this connection's login (``notice.logins``), or to every
        connection (a broadcast)."""
        ...

    def drop_rooms(self, room_keys: list[str]) -> None:
        """End this connection's subscriptions to exactly these rooms (canonical keys), and
        tell the client."""
        ...

    def recheck(self) -> None:
        """Ask the auth API again with this connection's credentials; drop what it no longer
        allows (or close it when it no longer admits them)."""
        ...

    def info(self) -> dict[str, Any]:
        """The registry entry (the monitor console's connection list)."""
        ...
