"""Fan-out as plain objects: a real Hub on the in-memory layer and memory stores, with
recording receivers in place of connections. What the hub hands over at the Receiver seam
(broker/fanout/receiver.py) is checked directly: which subscription gets a trigger once, under
which room and offset; who gets a direct message, a watcher's copy, a confirmation, a close.
No codec is involved: the hub encodes nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.layers import InMemoryChannelLayer

from broker import disconnect
from broker.disconnect import Disconnect
from broker.fanout.hub import Hub
from broker.fanout.router import CONTROL_GROUP, message_frame
from broker.fanout.settings import FanoutSettings
from broker.history import HistoryPolicy
from broker.identity import Identity, client_room, identity_from_api
from broker.messages import (
    Close, Confirmed, DirectMessage, DropRooms, Notify, Recheck, Trigger,
)
from broker.subscription import Subscription
from broker.stores import AckQuota, Stores
from rooms import Room, parse_room

CHAT_ANY = {"target": "chat", "customer": "*"}
CHAT1 = {"target": "chat", "customer": "1"}
CHAT2 = {"target": "chat", "customer": "2"}
SETTINGS = FanoutSettings(
    HistoryPolicy.from_setting([{"room": CHAT_ANY, "size": 10, "ttl": 60}]),
    history_meta_ttl=3600, trigger_id_ttl=60, ack_ttl=60, ack_quota=AckQuota(),
    registry_ttl=15)


class Recorder:
    """A Receiver that records what the hub hands it."""

    def __init__(self, conn_id: str, identity: Identity) -> None:
        self.id = conn_id
        self.connected_at = 0.0
        self.identity = identity
        self.got: list[tuple[Any, ...]] = []
        self.closed: Disconnect | None = None

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None:
        self.got.append(("trigger", sub.request_id, trigger.id, room_key, offset))

    def deliver_message(self, message: DirectMessage) -> None:
        self.got.append(("message", message.id, message.ack))

    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None:
        self.got.append(("watched", sub.request_id, message.id))

    def deliver_confirmed(self, event: Confirmed) -> None:
        self.got.append(("confirmed", event.message_id, event.by))

    def deliver_notice(self, notice: Notify) -> None:
        self.got.append(("notice", notice.id))

    def drop_rooms(self, room_keys: list[str]) -> None:
        self.got.append(("drop", room_keys))

    def recheck(self) -> None:
        self.got.append(("recheck",))

    def hold_live(self) -> None:
        self.got.append(("hold_live",))

    async def resync(self) -> None:
        self.got.append(("resync",))

    def close_soon(self, why: Disconnect) -> None:
        self.closed = why

    def info(self) -> dict[str, Any]:
        return {"id": self.id}


def agent(login: str) -> Identity:
    return identity_from_api({"login_id": login, "allowed_rooms": [CHAT_ANY]})


async def started() -> Hub:
    hub = Hub(InMemoryChannelLayer(), Stores.memory("p1"), SETTINGS)
    await hub.start()
    return hub


async def attach(hub: Hub, conn_id: str, login: str) -> Recorder:
    conn = Recorder(conn_id, agent(login))
    await hub.attach(conn)
    return conn


async def subscribe(hub: Hub, conn: Recorder, request_id: str, room: dict) -> Subscription:
    sub = Subscription(request_id, json.dumps(request_id), parse_room(room), owner=conn)
    await hub.subscribe(sub)
    return sub


async def test_a_trigger_reaches_each_subscription_once_under_its_own_recorded_room():
    hub = await started()
    try:
        conn = await attach(hub, "c1", "bob")
        await subscribe(hub, conn, "own", CHAT1)
        await subscribe(hub, conn, "any", CHAT_ANY)
        k1, k2 = parse_room(CHAT1).key, parse_room(CHAT2).key
        # to both rooms, recorded in both: "any" matches both and gets it once, under the
        # first room it matched; "own" under its own room, with its own room's offset
        wire = Trigger("t1", [k2, k1], "1", {k1: 7, k2: 3}).to_wire()
        hub.dispatch(wire)
        hub.dispatch(dict(wire))  # a second copy (another group): ignored
        assert sorted(conn.got) == [("trigger", "any", "t1", k2, 3),
                                    ("trigger", "own", "t1", k1, 7)]
        conn.got.clear()
        hub.dispatch(Trigger("t2", [k1], "2").to_wire())  # not recorded: no offsets
        assert sorted(conn.got) == [("trigger", "any", "t2", k1, None),
                                    ("trigger", "own", "t2", k1, None)]
    finally:
        await hub.stop()


async def test_direct_messages_go_to_owners_and_watchers_confirmations_to_owners():
    hub = await started()
    try:
        bob, bob2, carol = (await attach(hub, "b1", "bob"), await attach(hub, "b2", "bob"),
                            await attach(hub, "c1", "carol"))
        watch = Subscription("w", '"w"', client_room("api", "agent", "*"), owner=carol)
        await hub.subscribe(watch)
        to = bob.identity.destination
        assert to is not None
        message = DirectMessage("m1", client_room("api", "agent", "bob").key, to, None,
                                "{}", "1", ack=True)
        hub.dispatch(message.to_wire())
        hub.dispatch(message.to_wire())
        assert bob.got == bob2.got == [("message", "m1", True)]
        assert carol.got == [("watched", "w", "m1")]
        hub.dispatch(Confirmed("m1", to, "/agent/carol").to_wire())
        assert bob.got[-1] == ("confirmed", "m1", "/agent/carol") and len(carol.got) == 1
    finally:
        await hub.stop()


async def test_a_close_reaches_every_process_through_the_control_group():
    hub = await started()
    try:
        bob, bob2, carol = (await attach(hub, "b1", "bob"), await attach(hub, "b2", "bob"),
                            await attach(hub, "c1", "carol"))
        await hub.router.close(Close(disconnect.REPLACED, destination=bob.identity.destination,
                                     except_id="b2"))
        for _ in range(200):
            if bob.closed is not None:
                break
            await asyncio.sleep(0.01)
        assert bob.closed == disconnect.REPLACED
        assert bob2.closed is None and carol.closed is None
        assert CONTROL_GROUP == "cb.ctl"  # the group earlier versions listen on
    finally:
        await hub.stop()


async def test_router_records_and_stores_before_it_sends():
    hub = await started()
    try:
        conn = await attach(hub, "c1", "bob")
        await subscribe(hub, conn, "own", CHAT1)
        room = parse_room(CHAT1)
        trigger_id = await hub.router.publish([room], '{"n":1}', history=True)
        page = await hub.stores.history.read(room.key, since=None, limit=None)
        assert [(e.id, e.data_json) for e in page.entries] == [(trigger_id, '{"n":1}')]
        for _ in range(200):
            if conn.got:
                break
            await asyncio.sleep(0.01)
        assert conn.got == [("trigger", "own", trigger_id, room.key, page.top)]
        target: Room = client_room("api", "agent", "bob")
        mid = await hub.router.direct("/service/s", "/agent/bob", target, "5",
                                      None, ack=True)
        [stored] = await hub.stores.acks.pending("/agent/bob")
        assert stored.id == mid and stored.ack and stored.frame == message_frame(
            mid, "/service/s", "/agent/bob", "5", True)
    finally:
        await hub.stop()


def test_the_message_frame_is_the_json_dialects():
    assert message_frame("abc", None, "/agent/bob", '{"x":1}', False) == (
        '{"type":"message","from":null,"to":"/agent/bob","data":{"x":1},"id":"abc"}')
    assert message_frame("abc", "/service/s", "/agent/bob", "1", True) == (
        '{"type":"message","from":"/service/s","to":"/agent/bob","data":1,"id":"abc",'
        '"ack":true}')


async def test_a_trigger_excluding_a_connection_skips_only_its_subscriptions():
    hub = await started()
    try:
        sender, other = await attach(hub, "s1", "bob"), await attach(hub, "o1", "carol")
        await subscribe(hub, sender, "own", CHAT1)
        await subscribe(hub, sender, "any", CHAT_ANY)
        await subscribe(hub, other, "own", CHAT1)
        k1 = parse_room(CHAT1).key
        hub.dispatch(Trigger("t1", [k1], "1", exclude="s1").to_wire())
        assert sender.got == [] and other.got == [("trigger", "own", "t1", k1, None)]
    finally:
        await hub.stop()


async def test_the_server_apis_messages_reach_the_logins_they_name_or_everyone():
    hub = await started()
    try:
        bob, bob2, carol = (await attach(hub, "b1", "bob"), await attach(hub, "b2", "bob"),
                            await attach(hub, "c1", "carol"))
        k = parse_room(CHAT1).key
        for message in (Notify("n1", "1", ["bob"]), DropRooms("bob", [k]), Recheck("bob"),
                        Notify("n2", "2")):
            hub.dispatch(message.to_wire())
        expected = [("notice", "n1"), ("drop", [k]), ("recheck",), ("notice", "n2")]
        assert bob.got == bob2.got == expected
        assert carol.got == [("notice", "n2")]
    finally:
        await hub.stop()
