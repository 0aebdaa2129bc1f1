"""The session's effects carried out against the hub, the router and the stores.

The driver's half of the effect table in broker.effects: ``carry_out`` does the I/O one effect
names and returns its raw result; the session turns the result into the reply. Nothing here
decides what the client sees.
"""

from __future__ import annotations

from typing import Any

from . import disconnect, errors
from .effects import (
    Counts,
    Effect,
    JoinRoom,
    KeepPersistent,
    Kick,
    LeaveRooms,
    ListConnections,
    ListRooms,
    PublishRooms,
    QueryStatus,
    ReadHistory,
    ReadPresence,
    ReadStats,
    SendDirect,
    Stats,
)
from .errors import PersistentRefused
from .fanout.hub import Hub
from .fanout.receiver import Receiver
from .identity import client_room, parse_address
from .messages import Close


async def carry_out(effect: Effect, hub: Hub, owner: Receiver) -> Any:
    """Carry out ``effect`` for the connection ``owner``; raises what the I/O raised
    (``BrokerUnavailable``, ``AckRefused``, or a bug). ConfirmMessage is the driver's own: it
    runs in order with the connection's other acknowledgement updates."""
    registry = hub.stores.registry
    match effect:
        case JoinRoom(subscription=sub):
            sub.owner = owner
            await hub.subscribe(sub)
            if effect.history is None and effect.persist is None:
                return None
            try:
                page = None if effect.history is None else await hub.stores.history.read(
                    # The whole replay: the stream is bounded by its size (MAXLEN ~, a little
                    # more).
                    sub.room.key, since=effect.since, limit=0 if effect.since is None else None)
                if effect.persist is not None:
                    await _keep_persistent(hub, effect.persist)
            except BaseException:
                await hub.unsubscribe([sub])
                raise
            return page
        case LeaveRooms():
            await hub.unsubscribe(effect.subscriptions)
            if effect.forget is not None:
                await hub.stores.persistent.forget(effect.forget.owner,
                                                   effect.forget.request_ids_json)
            return None
        case PublishRooms():
            return await hub.router.publish(effect.rooms, effect.data_json,
                                            history=effect.history, tags=effect.tags)
        case SendDirect():
            # An acknowledged message waits for a recipient that is not connected yet.
            if not effect.ack and not await registry.destination_exists(effect.destination):
                return None
            target = parse_address(effect.destination)
            assert target is not None
            return await hub.router.direct(
                owner.identity.destination, effect.destination, client_room(*target),
                effect.data_json, effect.text, ack=effect.ack, content_type=effect.content_type)
        case ReadHistory():
            return await hub.stores.history.read(effect.room.key, since=effect.since,
                                                 limit=effect.limit)
        case ReadPresence():
            return await hub.stores.presence.members(effect.room.key)
        case QueryStatus():
            connections, rooms = await registry.status()
            return Counts(connections, rooms, hub.started_at)
        case ListConnections():
            return await registry.connections()
        case ListRooms(limit=limit):
            return await registry.rooms(limit)
        case ReadStats():
            processes = await registry.stats()
            connections, rooms = await registry.status()
            return Stats(processes, connections, rooms)
        case Kick(connection_id=conn_id, login_id=login_id):
            kicked = [c["id"] for c in await registry.connections()
                      if c.get("id") == conn_id
                      or (login_id is not None and c.get("login_id") == login_id)]
            if kicked:
                await hub.router.close(Close(disconnect.KICKED, conn_id=conn_id,
                                             login_id=login_id))
            return kicked
    raise TypeError(f"not carried out here: {effect!r}")


async def _keep_persistent(hub: Hub, keep: KeepPersistent) -> None:
    """Keep a persistent subscription for its login; raises PersistentRefused over the
    login's bound (BROKER_MAX_PERSISTENT_SUBSCRIPTIONS)."""
    if not await hub.stores.persistent.keep(keep.owner, keep.request_id_json, keep.entry,
                                            keep.limit, keep.ttl):
        raise PersistentRefused(errors.TOO_MANY_PERSISTENT,
                                f"a login keeps at most {keep.limit} persistent subscriptions")
