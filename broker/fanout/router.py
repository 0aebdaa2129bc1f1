"""Routing: which channel-layer groups a message goes to, and sending it there.

- A subscription joins the group of its own canonical room (``*`` kept as a literal value)
  and the group of its room's shape (its sorted key set) (``broker.fanout.membership``).
- A concrete trigger room (no ``*``) goes to the groups of its wildcard variants, but only for
  the wildcard masks that some subscription in the cluster uses for that shape (the registry
  keeps that set; mask 0, the room itself, is always included). A room with k keys has at most
  2^k variants; in practice one or two are in use.
- A trigger room that holds ``*`` goes to its shape's group; each process that holds rooms of
  that shape matches the trigger against its local index.
- One channel-layer message per group, never one per connection. Every copy carries the whole
  message, so the first copy a process receives delivers to every local subscription it
  matches and later copies of the same id are ignored (``broker.fanout.hub``): exactly once
  per subscription.

What is stored before it is sent (docs/guarantees.md): a trigger that asks for history is
recorded in its recorded rooms first and carries their offsets, so a subscriber reading the
history after joining misses nothing; an acknowledged direct message is stored first, so a
recipient connecting meanwhile finds it. Both dedupe the copy they get both ways by id.

Every message is a typed value of ``broker.messages``; this module only chooses groups.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from rooms import Room

from .. import metrics
from ..errors import BrokerUnavailable
from ..identity import client_room, parse_address, public_destination
from ..messages import Close, Confirmed, DirectMessage, Message, Trigger
from ..jsontext import dump_json
from ..stores import Stores
from .settings import FanoutSettings

CONTROL_GROUP = "cb.ctl"  # every process's channel joins it: closes (kick, replace)


def room_group(room_key: str) -> str:
    return "cb.r." + hashlib.blake2b(room_key.encode(), digest_size=12).hexdigest()


def shape_group(shape_key: str) -> str:
    return "cb.s." + hashlib.blake2b(shape_key.encode(), digest_size=12).hexdigest()


def message_frame(message_id: str, sender: str | None, destination: str, data_json: str,
                  ack: bool) -> str:
    """The JSON dialects' ``message`` frame of a direct message (PROTOCOL §3), built once by
    the sender's process and carried in ``DirectMessage.frame``.

    It belongs to the JSON codec, but processes of earlier versions read the frame from the
    channel-layer message (a rolling upgrade shares Redis), and the ack store keeps it: so it
    is built here, the one place, byte for byte as before (tests/integration/test_ws_protocol.py
    pins the bytes). Addresses are shown as clients name them (``/agent/bob``)."""
    flag = ',"ack":true' if ack else ""
    return (f'{{"type":"message","from":{dump_json(public_destination(sender))},'
            f'"to":{dump_json(public_destination(destination))},"data":{data_json},'
            f'"id":"{message_id}"{flag}}}')


class Router:
    """Sends typed messages to the groups that reach their receivers.

    ``on_failure`` runs when the channel layer fails a send (the upkeep then treats this
    process's subscriptions as possibly broken)."""

    def __init__(self, layer: Any, stores: Stores, settings: FanoutSettings,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.layer = layer
        self.stores = stores
        self.settings = settings
        self.on_failure = on_failure

    async def groups_for(self, rooms: list[Room]) -> set[str]:
        concrete = {r.shape_key for r in rooms if r.is_concrete}
        masks = await self.stores.registry.masks(sorted(concrete)) if concrete else {}
        groups: set[str] = set()
        for r in rooms:
            if r.is_concrete:
                groups.update(room_group(v.key) for v in r.variants(masks[r.shape_key]))
            else:
                groups.add(shape_group(r.shape_key))
        return groups

    async def send(self, groups: set[str], message: Message) -> None:
        wire = message.to_wire()
        try:
            await asyncio.gather(*(self.layer.group_send(g, wire) for g in groups))
        except Exception as exc:  # noqa: BLE001 - the layer's errors are not a documented type
            if self.on_failure is not None:
                self.on_failure()
            raise BrokerUnavailable(f"channel layer: {type(exc).__name__}: {exc}") from None

    async def publish(self, rooms: list[Room], data_json: str, history: bool = False,
                      trigger_id: str | None = None) -> str:
        """``trigger_id``: the client's own (checked by ``broker.publish``), which makes a
        retry idempotent: recorded once (within BROKER_TRIGGER_ID_TTL) and, through the
        receivers' dedupe by id, delivered once to a subscription that had it already."""
        s = self.settings
        once_ttl = s.trigger_id_ttl if trigger_id is not None else 0
        trigger_id = trigger_id or uuid.uuid4().hex
        offsets: dict[str, int] | None = None
        if history:
            recorded = s.history_policy.recorded(rooms)
            if recorded:
                offsets = await self.stores.history.append(
                    [(r.key, rule) for r, rule in recorded], trigger_id, data_json,
                    s.history_meta_ttl, once_ttl)
        trigger = Trigger(trigger_id, [r.key for r in rooms], data_json, offsets)
        await self.send(await self.groups_for(rooms), trigger)
        metrics.counters["triggers"] += 1
        return trigger_id

    async def direct(self, sender: str | None, destination: str, room: Room, data_json: str,
                     text: str | None, ack: bool = False, content_type: str | None = None
                     ) -> str:
        message_id = uuid.uuid4().hex
        message = DirectMessage(
            message_id, room.key, destination, sender,
            message_frame(message_id, sender, destination, data_json, ack), data_json, text,
            # STOMP receivers see a STOMP sender's content type with its exact body (§4.3)
            content_type if text is not None else None, ack)
        if ack:
            await self.stores.acks.put(message, self.settings.ack_ttl, self.settings.ack_quota)
        await self.send(await self.groups_for([room]), message)
        metrics.counters["direct_messages"] += 1
        return message_id

    async def confirmed(self, sender: str, message_id: str, recipient: str) -> None:
        """Tell the sender's connections, wherever they are, that a message is confirmed."""
        target = parse_address(sender)
        if target is None:
            return
        await self.send(await self.groups_for([client_room(*target)]),
                        Confirmed(message_id, sender, recipient))

    async def close(self, message: Close) -> None:
        """Close the matching connections of every process (kick, duplicate-login replace)."""
        await self.send({CONTROL_GROUP}, message)
