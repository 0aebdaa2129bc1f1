"""Chaos with exact accounting (issue 7): exactly-once delivery while clients churn and a
process is killed.

Two broker processes share one private Redis. Random clients (seeded RNG; the seed is printed,
``CHAOS_SEED=<n>`` replays the same decisions) connect to either process, subscribe to concrete
and wildcard rooms, unsubscribe, disconnect and reconnect. Triggers, each with a unique sequence
number in its data and 1 to 3 rooms (wildcard rooms included), are posted to /trigger
alternately on the two processes. Midway, one process is killed with SIGKILL and restarted:
its clients lose their connection and reconnect.

Recorded on the client side: for each subscription, when it was live (from the arrival of its
subscribe success reply to the moment its unsubscribe or disconnect was sent, or its process
was killed or its connection dropped); for each trigger, the window of its POST (request start
to 202). Then, exactly:

- no subscription ever received a trigger twice, nor one that none of its rooms match
  (``rooms.matches``), nor one after its unsubscribe success reply, nor on a subscribe that
  was refused;
- every subscription that matches a trigger and was live from before the POST started until
  DELIVERY_ALLOWANCE after its 202 (or until the end of the run) received it exactly once.

Timing only decides which (subscription, trigger) pairs are checked; the checks themselves
are exact. Counts: CHAOS_CLIENTS (40), CHAOS_TRIGGERS (300), CHAOS_SECONDS (30 of churn).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from rooms import InvalidRoom, Room, matches, parse_room
from tests.harness import ws_connect

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "40"))
TRIGGERS = int(os.environ.get("CHAOS_TRIGGERS", "300"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "30"))
# A subscription must stay live this long after a trigger's 202 for its delivery to be checked
# (delivery completes after the 202). Generous: the machine may be loaded.
DELIVERY_ALLOWANCE = float(os.environ.get("CHAOS_ALLOWANCE", "3.0"))
DRAIN_SECONDS = 20.0  # at the end: how long to wait for the deliveries still due
REPLY_TIMEOUT = 15.0

ALLOWED = [{"target": "chat", "customer": "*"}, {"team": "*", "kind": "*"}, {"n": "*"}]
CUSTOMERS = ["0", "1", "2", "3", "4", "5"]
TEAMS = ["t0", "t1", "t2", "t3"]
KINDS = ["a", "b"]
NUMBERS = [0, 1, 2, "1"]  # 1 and "1" are different values (§1)


def random_room(rng: random.Random, wild: float) -> dict[str, Any]:
    def v(values: list[Any]) -> Any:
        return "*" if rng.random() < wild else rng.choice(values)

    shape = rng.randrange(3)
    if shape == 0:
        return {"target": "chat", "customer": v(CUSTOMERS)}
    if shape == 1:
        return {"team": v(TEAMS), "kind": v(KINDS)}
    return {"n": v(NUMBERS)}


@dataclass(eq=False)
class Sub:
    conn: int
    rid: Any
    room: Room
    broker: int
    requested: float
    start: float | None = None  # subscribe success reply received
    refused: str | None = None  # the subscribe got an error reply
    end: float | None = None  # unsubscribe / disconnect sent, kill, or drop noticed
    unsubscribed: float | None = None  # unsubscribe success reply received
    got: Counter = field(default_factory=Counter)  # seq -> frames received


@dataclass
class Trigger:
    seq: int
    rooms: list[Room]
    broker: int
    start: float
    end: float | None = None  # 202 received
    trigger_id: str | None = None
    failed: str | None = None


class World:
    def __init__(self, brokers: list[Any]) -> None:
        self.brokers = brokers
        self.up = [True] * len(brokers)
        self.killed_at: list[float] = [math.inf] * len(brokers)  # last kill of each broker
        self.subs: list[Sub] = []
        self.triggers: dict[int, Trigger] = {}
        self.violations: list[str] = []
        self.deliveries = 0
        self.connections = 0
        self.drops = 0  # connections closed by the server side (the kill)
        self.errors: Counter[str] = Counter()  # connection attempts that failed, by error
        self.stop = False
        self.conn_ids = iter(range(1, 10**9))

    def violation(self, text: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(text)


class Conn:
    """One WebSocket connection: a reader task files deliveries and queues the replies."""

    def __init__(self, world: World, ws: Any, broker: int, rich: bool) -> None:
        self.world, self.ws, self.broker, self.rich = world, ws, broker, rich
        self.id = next(world.conn_ids)
        self.opened = time.monotonic()
        self.live: dict[str, Sub] = {}  # JSON of request id -> its subscription (any state)
        self.replies: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self.leaving: Sub | None = None  # the subscription of the unsubscribe in flight
        self.reader = asyncio.ensure_future(self.read())
        world.connections += 1

    def end_all(self, when: float) -> None:
        for sub in self.live.values():
            if sub.end is None:
                sub.end = when

    async def read(self) -> None:
        world = self.world
        try:
            async for raw in self.ws:
                now = time.monotonic()
                frame = json.loads(raw)
                if isinstance(frame, dict) and frame.get("type") == "publish":
                    self.deliver(frame)
                    continue
                leaving, self.leaving = self.leaving, None
                if leaving is not None and self.success(frame, leaving.rid):
                    # From here on, in frame order, nothing may arrive for it.
                    leaving.unsubscribed = now
                self.replies.put_nowait((now, frame))
        except ConnectionClosed:
            pass
        finally:
            now = time.monotonic()
            if not world.stop and any(s.end is None for s in self.live.values()):
                world.drops += 1
            # A kill ends the subscriptions at the kill, even if the drop is noticed later.
            killed = world.killed_at[self.broker]
            self.end_all(min(now, killed) if killed > self.opened else now)
            self.replies.put_nowait((now, None))

    def deliver(self, frame: dict[str, Any]) -> None:
        world = self.world
        world.deliveries += 1
        data = frame.get("data")
        seq = data.get("seq") if isinstance(data, dict) else None
        sub = self.live.get(json.dumps(frame.get("requestId")))
        trigger = world.triggers.get(seq) if isinstance(seq, int) else None
        where = f"conn {self.id} on broker {self.broker}"
        if sub is None or trigger is None:
            world.violation(f"{where}: frame for an unknown subscription or trigger: {frame}")
            return
        sub.got[seq] += 1
        if sub.got[seq] > 1:
            world.violation(f"{where}: trigger {seq} received {sub.got[seq]} times by "
                            f"{sub.rid!r} {sub.room}")
        if not any(matches(sub.room, r) for r in trigger.rooms):
            world.violation(f"{where}: trigger {seq} {trigger.rooms} does not match "
                            f"{sub.rid!r} {sub.room}")
        if sub.refused is not None:
            world.violation(f"{where}: trigger {seq} on refused subscribe {sub.rid!r}")
        if sub.unsubscribed is not None:
            world.violation(f"{where}: trigger {seq} after unsubscribing {sub.rid!r}")
        if self.rich:
            try:
                room_key = parse_room(frame.get("room")).key
            except InvalidRoom:
                room_key = None
            if not any(r.key == room_key and matches(sub.room, r) for r in trigger.rooms):
                world.violation(f"{where}: frame room {frame.get('room')} is not a matching "
                                f"room of trigger {seq}")
            if trigger.trigger_id is not None and frame.get("id") != trigger.trigger_id:
                world.violation(f"{where}: frame id {frame.get('id')} for trigger {seq} "
                                f"is not {trigger.trigger_id}")

    async def next_reply(self) -> tuple[float, Any]:
        when, frame = await asyncio.wait_for(self.replies.get(), REPLY_TIMEOUT)
        if frame is None:
            self.replies.put_nowait((when, None))
            raise ConnectionError("closed")
        return when, frame

    def success(self, frame: Any, rid: Any) -> bool:
        if not isinstance(frame, dict) or frame.get("code") != "success":
            return False
        return not self.rich or frame.get("requestId") == rid

    async def subscribe(self, rid: Any, room: dict[str, Any]) -> None:
        sub = Sub(self.id, rid, parse_room(room), self.broker, time.monotonic())
        self.live[json.dumps(rid)] = sub
        self.world.subs.append(sub)
        await self.ws.send(json.dumps({"type": "subscribe", "room": room, "requestId": rid}))
        when, frame = await self.next_reply()
        if self.success(frame, rid):
            sub.start = when
        else:
            sub.refused = repr(frame)
            self.world.violation(f"conn {self.id}: subscribe {rid!r} {room} got {frame}")

    async def unsubscribe(self, sub: Sub) -> None:
        sub.end = time.monotonic()
        self.leaving = sub
        await self.ws.send(json.dumps({"type": "unsubscribe", "requestId": sub.rid}))
        _, frame = await self.next_reply()
        if not self.success(frame, sub.rid):
            self.world.violation(f"conn {self.id}: unsubscribe {sub.rid!r} got {frame}")


class Client:
    """A user that connects to either process, subscribes, unsubscribes, leaves, comes back."""

    def __init__(self, world: World, n: int, rng: random.Random) -> None:
        self.world = world
        self.n = n
        self.rng = rng
        self.rich = n % 2 == 1  # half the clients speak the rich dialect
        self.int_ids = n % 3 == 0  # some use numeric request ids (their JSON type is kept)
        self.conn: Conn | None = None

    async def run(self, until: float) -> None:
        while time.monotonic() < until and not self.world.stop:
            broker = self.rng.randrange(len(self.world.brokers))
            try:
                await self.session(broker, until)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                self.world.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.2 + self.rng.random() * 0.3)

    async def session(self, broker: int, until: float) -> None:
        world = self.world
        ws = await ws_connect(world.brokers[broker].ws_url, token="chaos", open_timeout=5,
                              subprotocols=["combroker.v1"] if self.rich else None)
        conn = self.conn = Conn(world, ws, broker, self.rich)
        try:
            _, welcome = await conn.next_reply()
            if not (isinstance(welcome, dict) and welcome.get("is_authorized")):
                raise ConnectionError(f"not welcome: {welcome!r}")
            leave = min(until, time.monotonic() + self.rng.uniform(2.0, 14.0))
            rid = 0
            while time.monotonic() < leave and not world.stop:
                current = [s for s in conn.live.values() if s.start and s.end is None]
                if current and (len(current) >= 6 or self.rng.random() < 0.3):
                    await conn.unsubscribe(self.rng.choice(current))
                else:
                    rid += 1
                    await conn.subscribe(rid if self.int_ids else f"c{self.n}-{rid}",
                                         random_room(self.rng, wild=0.25))
                await asyncio.sleep(self.rng.uniform(0.05, 1.2))
            if time.monotonic() >= until:
                return  # keep the connection and its subscriptions for the final drain
            conn.end_all(time.monotonic())
            await ws.close()
        except TimeoutError:
            # No reply in REPLY_TIMEOUT: give up this connection (its subscriptions end now).
            world.violation(f"conn {conn.id} on broker {broker}: no reply within "
                            f"{REPLY_TIMEOUT}s")
            conn.end_all(time.monotonic())
            await ws.close()
            raise
        finally:
            if time.monotonic() < until or world.stop:
                await asyncio.wait([conn.reader], timeout=10)


async def post_triggers(world: World, token: str, rng: random.Random, until: float) -> None:
    """TRIGGERS triggers over the run, alternating between the processes (the other one while
    one is down); two posts in flight at a time."""
    gap = (until - time.monotonic()) / TRIGGERS * 2
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:

        async def worker(first: int) -> None:
            for seq in range(first, TRIGGERS, 2):
                rooms = [parse_room(random_room(rng, wild=0.2))
                         for _ in range(rng.choice([1, 1, 2, 3]))]
                broker = seq % 2 if world.up[seq % 2] else 1 - seq % 2
                trigger = Trigger(seq, rooms, broker, time.monotonic())
                world.triggers[seq] = trigger
                try:
                    response = await http.post(
                        world.brokers[broker].base_url + "/trigger",
                        headers={"Authorization": f"Bearer {token}"},
                        json={"rooms": [r.original for r in rooms], "data": {"seq": seq}})
                except httpx.HTTPError as exc:
                    trigger.failed = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 202:
                        trigger.end = time.monotonic()
                        trigger.trigger_id = response.json()["id"]
                    else:
                        trigger.failed = f"HTTP {response.status_code}: {response.text}"
                await asyncio.sleep(rng.uniform(0, 2 * gap))

        await asyncio.gather(worker(0), worker(1))


async def kill_and_restart(world: World, victim: int, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    world.up[victim] = False
    world.killed_at[victim] = time.monotonic()
    world.brokers[victim].kill()  # SIGKILL
    await asyncio.sleep(1.5)
    await asyncio.to_thread(world.brokers[victim].restart)
    world.up[victim] = True


def due(world: World, sub: Sub, trigger: Trigger) -> bool:
    """The pair is checked: the subscription was live over the whole life of the trigger."""
    if sub.start is None or trigger.end is None or sub.refused is not None:
        return False
    if not sub.start <= trigger.start:
        return False
    if sub.end is not None and sub.end < trigger.end + DELIVERY_ALLOWANCE:
        return False
    return any(matches(sub.room, r) for r in trigger.rooms)


@pytest.mark.timeout(240)
async def test_chaos_exactly_once(broker_factory, auth_api, redis_server, unique, trigger_token):
    print(f"\nchaos seed {SEED} (CHAOS_SEED={SEED} replays the same random decisions)")
    rng = random.Random(SEED)
    auth_api.allow(token="chaos", body={"allowed_rooms": ALLOWED, "profile": "agent"})
    env = {"BROKER_KEY_PREFIX": f"chaos-{unique}", "BROKER_LOG_LEVEL": "WARNING"}
    brokers = [broker_factory(auth_api=auth_api, redis=redis_server, name=f"chaos{i}", **env)
               for i in range(2)]
    world = World(brokers)
    t0 = time.monotonic()
    until = t0 + SECONDS
    clients = [Client(world, n, random.Random(rng.random())) for n in range(CLIENTS)]
    victim = rng.randrange(2)
    tasks = [asyncio.ensure_future(c.run(until)) for c in clients]
    await asyncio.sleep(1.0)  # let subscriptions build up before the first trigger
    chaos = asyncio.ensure_future(kill_and_restart(world, victim, t0 + SECONDS * 0.4))
    await post_triggers(world, trigger_token, random.Random(rng.random()), until)
    await chaos
    await asyncio.gather(*tasks)

    # Drain: every subscription still live must get every trigger it is due, however slow.
    deadline = time.monotonic() + DRAIN_SECONDS
    missing = [(s, t) for s in world.subs if s.end is None
               for t in world.triggers.values() if due(world, s, t)]
    while missing and time.monotonic() < deadline:
        missing = [(s, t) for s, t in missing if not s.got[t.seq]]
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # room for a late duplicate to show
    world.stop = True
    finished = time.monotonic()
    for c in clients:
        if c.conn is not None:
            c.conn.end_all(finished)
            await c.conn.ws.close()

    checked = exact = 0
    for trigger in world.triggers.values():
        for sub in world.subs:
            if due(world, sub, trigger):
                checked += 1
                if sub.got[trigger.seq] == 1:
                    exact += 1
                else:
                    world.violation(
                        f"trigger {trigger.seq} (broker {trigger.broker}, rooms "
                        f"{[r.key for r in trigger.rooms]}, posted {trigger.start - t0:.2f}.."
                        f"{trigger.end - t0:.2f}s) received {sub.got[trigger.seq]} times by "
                        f"conn {sub.conn} {sub.rid!r} {sub.room} on broker {sub.broker}, live "
                        f"{sub.start - t0:.2f}..{(sub.end or finished) - t0:.2f}s")

    posted = [t for t in world.triggers.values() if t.end is not None]
    live_subs = [s for s in world.subs if s.start is not None]
    print(f"chaos: {CLIENTS} clients, {world.connections} connections ({world.drops} dropped "
          f"by the kill of broker {victim} at {world.killed_at[victim] - t0:.1f}s), "
          f"{len(world.subs)} subscribes ({len(live_subs)} succeeded), "
          f"{len(posted)}/{len(world.triggers)} triggers accepted "
          f"({len(world.triggers) - len(posted)} failed around the kill), "
          f"{world.deliveries} deliveries; {checked} (subscription, trigger) pairs due, "
          f"{exact} received exactly once; failed connects {dict(world.errors)}; "
          f"run {finished - t0:.1f}s")
    assert len(posted) >= TRIGGERS * 0.8, [t.failed for t in world.triggers.values() if t.failed]
    assert checked > TRIGGERS, "too few pairs checked to mean anything"
    assert world.drops > 0, "the kill dropped no connection"
    assert not world.violations, f"seed {SEED}: {len(world.violations)} violations:\n" + \
        "\n".join(world.violations[:40])
