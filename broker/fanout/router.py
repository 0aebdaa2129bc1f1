"""Routing: which channel-layer groups a message goes to, and sending it there.

- A subscription joins the group of its own canonical room (``*`` kept as a literal value)
  and the group of its room's shape (its sorted key set) (``broker.fanout.membership``).
- A concrete trigger room (no ``*``) goes to the groups of its wildcard variants, but only for
  the wildcard masks that some subscription in the cluster uses for that shape (the registry
  keeps that set; mask 0, the room itself, is always included; ``broker.fanout.masks`` caches
  it and checks it after every send). A room with k keys has at most 2^k variants; in practice
  one or two are in use.
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

import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from rooms import Room

from .. import metrics
from ..errors import BrokerUnavailable
from ..identity import client_room, parse_address, public_destination
from ..messages import Close, Confirmed, DirectMessage, Message, PresenceEvent, Trigger
from ..jsontext import dump_json
from ..filters import Tags
from ..stores import Stores
from ..triggers import TriggerRequest
from .masks import Masks
from .sender import Send, Sender
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
        self.sender = Sender(layer)
        self.masks = Masks(stores.registry)

    @staticmethod
    def groups_for(rooms: list[Room], masks: Callable[[str], frozenset[int]]) -> set[str]:
        """The groups of ``rooms`` with ``masks(shape_key)`` the masks in use per shape."""
        groups: set[str] = set()
        for r in rooms:
            if r.is_concrete:
                groups.update(room_group(r.masked_key(m)) for m in masks(r.shape_key))
            else:
                groups.add(shape_group(r.shape_key))
        return groups

    async def send(self, groups: set[str], message: Message) -> None:
        """Send ``message`` to ``groups`` (``BrokerUnavailable`` if the layer fails)."""
        _raise((await self._send([(groups, message.to_wire())]))[0])

    async def _send(self, sends: list[Send]) -> list[BrokerUnavailable | None]:
        failures = await self.sender.send(sends)
        if any(f is not None for f in failures) and self.on_failure is not None:
            self.on_failure()
        return [None if f is None else _unavailable(f) for f in failures]

    async def route(self, messages: list[tuple[list[Room], Message]]
                    ) -> list[BrokerUnavailable | None]:
        """Send each message to the groups of its rooms; per message, None once every group
        it needs was sent to, else why not.

        The masks of concrete rooms are read by a read that starts after this call
        (``broker.fanout.masks``), so every subscription confirmed before the call gets its
        message. One message is sent at once with the masks last read, while they are read
        again, and to the groups of any mask that read adds before this returns (a second
        copy is dropped by id); several wait for the read, so that they arrive in order."""
        shapes = {r.shape_key for rooms, _ in messages for r in rooms if r.is_concrete}
        if not shapes:
            return await self._send([(self.groups_for(rooms, _no_masks), m.to_wire())
                                     for rooms, m in messages])
        if len(messages) > 1:
            try:
                fresh = await self.masks.current(shapes)
            except Exception as exc:  # noqa: BLE001 - BrokerUnavailable, or a bug
                return [_unavailable(exc)] * len(messages)
            return await self._send([(self.groups_for(rooms, fresh.__getitem__), m.to_wire())
                                     for rooms, m in messages])
        ((rooms, message),) = messages
        used = {shape: self.masks.cached(shape) for shape in shapes}
        groups, wire = self.groups_for(rooms, used.__getitem__), message.to_wire()
        reading = self.masks.current(shapes)  # starts now; awaited once the send is done
        sent = await self._send([(groups, wire)])
        try:
            read = await reading
        except Exception as exc:  # noqa: BLE001 - BrokerUnavailable, or a bug
            # it may not have reached a subscription whose mask was new: not known delivered
            return [_unavailable(exc)]
        if sent[0] is not None or all(read[shape] <= used[shape] for shape in shapes):
            return sent
        return await self._send([(self.groups_for(rooms, read.__getitem__) - groups, wire)])

    async def publish(self, rooms: list[Room], data_json: str, history: bool = False,
                      trigger_id: str | None = None, exclude: str | None = None,
                      tags: Tags | None = None) -> str:
        """``trigger_id``: the client's own (checked by ``broker.triggers``), which makes a
        retry idempotent: recorded once (within BROKER_TRIGGER_ID_TTL) and, through the
        receivers' dedupe by id, delivered once to a subscription that had it already.
        ``exclude``: a connection id whose subscriptions do not get it (the hub skips them).
        ``tags``: checked by ``broker.filters.check_tags``; what filters match (the hub)."""
        outcome = (await self._publish([(rooms, data_json, history, trigger_id, exclude,
                                          tags)]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def publish_many(self, triggers: Sequence[TriggerRequest]) -> list[str | Exception]:
        """Publish each trigger; per trigger, in order, its id or the exception that refused
        it (``BrokerUnavailable``; ``ValueError`` for data that is not JSON the broker sends).
        Recorded ones are recorded first; then all are sent in one round trip per shard."""
        encoded: list[str | Exception] = []
        for t in triggers:
            try:
                encoded.append(dump_json(t.data))
            except ValueError as exc:
                encoded.append(exc)
        valid = [i for i, data in enumerate(encoded) if isinstance(data, str)]
        outcomes = await self._publish([(triggers[i].rooms, str(encoded[i]),
                                         triggers[i].history, triggers[i].trigger_id,
                                         triggers[i].exclude, triggers[i].tags)
                                        for i in valid])
        results: list[str | Exception] = list(encoded)
        for i, outcome in zip(valid, outcomes, strict=True):
            results[i] = outcome
        return results

    async def _publish(self, triggers: list[tuple[list[Room], str, bool, str | None,
                                                  str | None, Tags | None]]
                       ) -> list[str | Exception]:
        s = self.settings
        ids = [trigger_id or uuid.uuid4().hex for _, _, _, trigger_id, _, _ in triggers]
        offsets: list[dict[str, int] | None | Exception] = [None] * len(triggers)
        down: BrokerUnavailable | None = None  # the history's Redis failed: record no more
        for i, (rooms, data_json, history, own_id, _, tags) in enumerate(triggers):
            recorded = s.history_policy.recorded(rooms) if history else []
            if recorded and down is not None:
                offsets[i] = down
            elif recorded:
                # one at a time, in order: a room's offsets follow the batch's order
                try:
                    offsets[i] = await self.stores.history.append(
                        [(r.key, rule) for r, rule in recorded], ids[i], data_json,
                        s.history_meta_ttl, s.trigger_id_ttl if own_id is not None else 0,
                        tags)
                except BrokerUnavailable as exc:
                    offsets[i] = down = exc
        results: list[str | Exception] = list(ids)
        sending: list[int] = []
        messages: list[tuple[list[Room], Message]] = []
        for i, (rooms, data_json, _, _, exclude, tags) in enumerate(triggers):
            recorded_at = offsets[i]
            if isinstance(recorded_at, Exception):
                results[i] = recorded_at
                continue
            sending.append(i)
            messages.append((rooms, Trigger(ids[i], [r.key for r in rooms], data_json,
                                            recorded_at, exclude,
                                            dict(tags) if tags else None)))
        for i, failure in zip(sending, await self.route(messages), strict=True):
            if failure is not None:
                results[i] = failure
            else:
                metrics.counters["triggers"] += 1
        return results

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
        _raise((await self.route([([room], message)]))[0])
        metrics.counters["direct_messages"] += 1
        return message_id

    async def confirmed(self, sender: str, message_id: str, recipient: str) -> None:
        """Tell the sender's connections, wherever they are, that a message is confirmed."""
        target = parse_address(sender)
        if target is None:
            return
        _raise((await self.route([([client_room(*target)],
                                   Confirmed(message_id, sender, recipient))]))[0])

    async def close(self, message: Close) -> None:
        """Close the matching connections of every process (kick, duplicate-login replace)."""
        await self.send({CONTROL_GROUP}, message)

    async def presence(self, events: list[PresenceEvent]) -> None:
        """Each event to its room's group, in order (``BrokerUnavailable`` if one failed)."""
        for failure in await self._send([({room_group(e.room_key)}, e.to_wire())
                                         for e in events]):
            _raise(failure)


def _raise(failure: Exception | None) -> None:
    """The outcome of a one-message ``route`` or ``_send``: its failure, raised."""
    if failure is not None:
        raise failure


def _no_masks(shape_key: str) -> frozenset[int]:
    raise AssertionError(f"no concrete room of shape {shape_key} to route")


def _unavailable(exc: Exception) -> BrokerUnavailable:
    if isinstance(exc, BrokerUnavailable):
        return exc
    return BrokerUnavailable(f"channel layer: {type(exc).__name__}: {exc}")
