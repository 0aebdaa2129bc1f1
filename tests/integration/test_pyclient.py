"""The Python client library (tcpgate.client) against a real gate process on a private Redis,
with a separate broker (uvicorn) for triggers: the asyncio ``Client`` and the Communication
Broker-style synchronous facade ``broker_client``.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
from typing import Any

import pytest

from tcpgate.client import BrokerError, Client, Refused, broker_client
from tests.harness import ROOT
from tests.integration.gatehelpers import STATIC_KEYS, self_signed_cert, start_gate

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pair(broker_factory, auth_api, redis_server):
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, **STATIC_KEYS)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")
    return gate, web


def test_importable_without_django():
    code = ("import sys, tcpgate.client; "
            "assert not any(m.split('.')[0] in ('django', 'broker', 'channels') "
            "for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


async def test_async_client(pair, auth_api, unique):
    gate, web = pair
    room = {"target": "py", "id": unique}
    auth_api.allow(f"a{unique}", {"allowed_rooms": [room], "login_id": f"alice{unique}"})
    auth_api.allow(f"s{unique}", {"login_id": f"svc{unique}", "profile": "service"})
    async with Client("127.0.0.1", gate.port, token=f"a{unique}") as alice, \
            Client("127.0.0.1", gate.port, token=f"s{unique}") as svc:
        assert alice.welcome["destination"] == f"/agent/alice{unique}"
        sub = await alice.subscribe(room)
        assert (await web.atrigger([room], {"n": 1})).status_code == 202
        m = await alice.receive(5)
        assert (m.kind, m.data, m.subscription, m.room) == ("publish", {"n": 1}, sub, room)

        # the service watches alice and publishes into her room
        watch = await svc.subscribe(f"/agent/alice{unique}")
        assert await svc.publish(room, "from the backend")
        m = await alice.receive(5)
        assert m.data == "from the backend"
        assert await svc.send(f"/agent/alice{unique}", {"hi": True})
        m = await alice.receive(5)
        assert (m.kind, m.data, m.sender) == ("message", {"hi": True}, f"/service/svc{unique}")
        copy = await svc.receive(5)
        assert copy.subscription == watch and copy.data["data"] == {"hi": True}

        with pytest.raises(BrokerError) as err:
            await alice.subscribe({"target": "forbidden"})
        assert err.value.code == "room-not-found"
        with pytest.raises(BrokerError) as err:
            await alice.send(f"/agent/nobody{unique}", 1)
        assert err.value.code == "destination-not-found"

        await alice.unsubscribe(sub)
        await web.atrigger([room], "not for alice")
        with pytest.raises(asyncio.TimeoutError):
            await alice.receive(0.5)


async def test_async_client_refused(pair):
    gate, _ = pair
    with pytest.raises(Refused) as err:
        await Client("127.0.0.1", gate.port, token="nobody").connect()
    assert err.value.code == "refused"
    with pytest.raises(Refused) as err:
        await Client("127.0.0.1", gate.port, app_key="app-secret", login_id="x",
                     profile_key="bad").connect()
    assert err.value.code == "Invalid Profile/Passcode."


async def test_reconnects_and_resubscribes(broker_factory, auth_api, redis_server, unique):
    room = {"target": "re", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "login_id": f"r{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web")
    states: list[str] = []
    client = Client("127.0.0.1", gate.port, token=unique, backoff=(0.1, 0.5),
                    on_connected=lambda w: states.append("up"),
                    on_disconnected=lambda r: states.append("down"))
    await client.connect()
    await client.subscribe(room, request_id="keep")
    await asyncio.to_thread(gate.restart)  # the gate goes away and comes back on its port
    await asyncio.wait_for(_until(lambda: states.count("up") == 2), 15)
    # The re-subscribe is in flight right after the reconnect: trigger until one arrives (the
    # observable sign that the gate has the subscription again), within 50 tries.
    for _ in range(50):
        assert (await web.atrigger([room], "again")).status_code == 202
        try:
            m = await client.receive(0.3)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("no delivery after the reconnect")
    assert (m.subscription, m.data) == ("keep", "again")
    assert states[:3] == ["up", "down", "up"]
    await client.disconnect()
    with pytest.raises(StopAsyncIteration):
        await client.__anext__()


async def test_presence(broker_factory, auth_api, redis_server, unique):
    """join/leave Messages, the presence queries, and a subscription that keeps its presence
    across a reconnect (the gate restarts: the client resumes, or subscribes again)."""
    room = {"target": "presence", "id": unique}
    for login in ("alice", "bob"):
        auth_api.allow(f"{login}{unique}", {"allowed_rooms": [room], "login_id": login})
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server)
    ups: list[str] = []
    alice = Client("127.0.0.1", gate.port, token=f"alice{unique}", backoff=(0.1, 0.5),
                   on_connected=lambda w: ups.append("up"))
    await alice.connect()
    sub = await alice.subscribe(room, presence=True)

    async def next_presence(kind: str, login: str) -> None:
        m = await alice.receive(10)
        assert (m.kind, m.subscription, m.room, m.member) == (
            kind, sub, room, {"login": login, "profile": "agent"}), m

    await next_presence("join", "alice")  # its own
    async with Client("127.0.0.1", gate.port, token=f"bob{unique}") as bob, \
            Client("127.0.0.1", gate.port, token=f"bob{unique}") as bob2:
        await bob.subscribe(room)
        await next_presence("join", "bob")
        await bob2.subscribe(room)  # bob's second connection: no event
        reply = await alice.presence(room)
        assert isinstance(reply.pop("requestId"), str)
        assert reply == {
            "type": "presence", "room": room, "anonymous": 0,
            "members": [{"login": "alice", "profile": "agent", "connections": 1},
                        {"login": "bob", "profile": "agent", "connections": 2}]}
        stats = await alice.presence_stats(room)
        assert (stats["type"], stats["members"], stats["connections"]) == (
            "presence_stats", 2, 3)
    await next_presence("leave", "bob")  # once both of bob's connections are gone
    with pytest.raises(BrokerError) as err:
        await alice.presence({"target": "elsewhere"})
    assert err.value.code == "room-not-found"

    await asyncio.to_thread(gate.restart)
    await asyncio.wait_for(_until(lambda: ups.count("up") == 2), 15)
    await next_presence("join", "alice")  # back in the room, and told so
    async with Client("127.0.0.1", gate.port, token=f"bob{unique}") as bob:
        await bob.subscribe(room)
        await next_presence("join", "bob")
    await next_presence("leave", "bob")
    await alice.disconnect()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


class Recorder:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def callbacks(self) -> dict:
        return {
            "on_connected": lambda: self.events.put(("connected",)),
            "on_disconnected": lambda: self.events.put(("disconnected",)),
            "on_error": lambda text: self.events.put(("error", text)),
            "on_message": lambda origin, message, dest: self.events.put(
                ("message", origin, message, dest)),
            "on_ack": lambda transaction, desc: self.events.put(("ack", transaction, desc)),
        }

    def next(self, kind: str, timeout: float = 5.0) -> tuple:
        while True:
            event = self.events.get(timeout=timeout)
            if event[0] == kind:
                return event


def test_sync_facade(pair, unique):
    gate, _ = pair
    agents = {}
    for name, key in (("agent1", "ak"), ("agent2", "ak"), ("super", "sk")):
        client, rec = broker_client(name, "app-secret"), Recorder()
        client.link_call_back_functions(**rec.callbacks())
        assert client.connect(None, "127.0.0.1", gate.port, f"{name}{unique}", key)
        rec.next("connected")
        agents[name] = (client, rec)
    (a1, r1), (a2, r2), (sup, rs) = agents["agent1"], agents["agent2"], agents["super"]

    t = sup.subscribe(f"/agent/agent2{unique}.*", use_regex=True)
    assert rs.next("ack")[1:] == (t, "OK")
    t = sup.subscribe(f"/agent/agent1{unique}")
    assert rs.next("ack")[1:] == (t, "OK")

    t = a1.send(f"/agent/agent2{unique}", "exact text {")
    assert r1.next("ack")[1:] == (t, "OK")
    assert r2.next("message")[1:] == (f"agent1{unique}", "exact text {", f"/agent/agent2{unique}")
    assert rs.next("message")[1:] == (f"agent1{unique}", "exact text {", f"/agent/agent2{unique}")

    t = a2.send(f"/agent/agent1{unique}", '{"a": 1}', "application/json")
    assert r2.next("ack")[1:] == (t, "OK")
    assert r1.next("message")[2] == '{"a":1}'
    assert rs.next("message")[1:] == (f"agent2{unique}", '{"a":1}', f"/agent/agent1{unique}")

    t = a1.send(f"/agent/nobody{unique}", "x")
    assert r1.next("ack")[1:] == (t, "destination-not-found")
    t = a1.subscribe('/room/{"x":"1"}')
    assert r1.next("ack")[1:] == (t, "room-not-found")

    t = sup.unsubscribe()
    assert rs.next("ack")[1:] == (t, "OK")
    for client, rec in agents.values():
        client.disconnect()
        rec.next("disconnected")


def test_sync_facade_refused(pair):
    gate, _ = pair
    client, rec = broker_client("x", "wrong-app-key"), Recorder()
    client.link_call_back_functions(**rec.callbacks())
    assert not client.connect(None, "127.0.0.1", gate.port, "someone", "ak")
    assert rec.next("error")[1] == "Invalid Application Secret Key."
    client.disconnect()


def test_sync_facade_tls_verifies_the_server(broker_factory, auth_api, tmp_path, unique):
    certfile, keyfile = self_signed_cert(tmp_path / "gate")
    other, _ = self_signed_cert(tmp_path / "other", cn="other")
    gate = start_gate(broker_factory, auth_api=auth_api, certfile=certfile, keyfile=keyfile,
                      **STATIC_KEYS)
    good, rec = broker_client("tls", "app-secret"), Recorder()
    good.link_call_back_functions(**rec.callbacks())
    good.set_ssl_options(certfile)
    assert good.connect("localhost", "127.0.0.1", gate.port, f"t{unique}", "ak")
    good.disconnect()

    bad, rec = broker_client("tls", "app-secret"), Recorder()
    bad.link_call_back_functions(**rec.callbacks())
    bad.set_ssl_options(other)  # trusts another certificate: the gate's must be rejected
    assert not bad.connect("localhost", "127.0.0.1", gate.port, f"t{unique}", "ak")
    assert "CERTIFICATE_VERIFY_FAILED" in rec.next("error")[1]
    bad.disconnect()

    wrong_name, rec = broker_client("tls", "app-secret"), Recorder()
    wrong_name.link_call_back_functions(**rec.callbacks())
    wrong_name.set_ssl_options(certfile)
    assert not wrong_name.connect("not-the-gate.example", "127.0.0.1", gate.port, "t", "ak")
    wrong_name.disconnect()


async def test_tickets_filters_and_persistent_subscriptions(broker_factory, auth_api, redis_server,
                                                            unique):
    """The client logs in with a fresh ticket at each connect (the auth API is stopped: only a
    ticket gets in, and a ticket opens one connection), subscribes with a filter and
    ``persistent``, and a later client of the same login gets that subscription back, filter
    included, without subscribing."""
    from broker.tickets import encode

    secret = f"py-{unique}"
    room = {"target": "py-tickets", "id": unique}
    identity = {"login_id": f"t{unique}", "allowed_rooms": [room]}
    auth_api.stop()
    env = {"BROKER_TICKET_SECRET": secret, "BROKER_KEY_PREFIX": f"py-{unique}"}
    gate = start_gate(broker_factory, auth_api=auth_api, redis=redis_server, **env)
    web = broker_factory(auth_api=auth_api, redis=redis_server, name="web", **env)
    tickets: list[str] = []

    def fresh() -> str:
        tickets.append(encode(identity, secret, 60))
        return tickets[-1]

    async def tagged(client: Client, wanted: str) -> Any:
        """Trigger "new" then ``wanted`` until one arrives: the filter lets only "paid" by."""
        for n in range(50):
            for status in ("new", wanted):
                r = await web.atrigger(None, body={"rooms": [room], "tags": {"status": status},
                                                   "data": {"status": status, "n": n}})
                assert r.status_code == 202, r.text
            try:
                return await client.receive(0.3)
            except TimeoutError:
                continue
        raise AssertionError("no delivery")

    paid = {"eq": ["status", "paid"]}
    client = Client("127.0.0.1", gate.port, ticket=fresh, backoff=(0.1, 0.5))
    await client.connect()
    await client.subscribe(room, request_id="kept", filter=paid, persistent=True)
    m = await tagged(client, "paid")
    assert (m.subscription, m.data["status"]) == ("kept", "paid")
    await asyncio.to_thread(gate.restart)  # the reconnect needs a new ticket
    m = await tagged(client, "paid")
    assert (m.subscription, m.data["status"]) == ("kept", "paid")
    assert len(tickets) == 2 and client.connected
    await client.disconnect()

    async with Client("127.0.0.1", gate.port, ticket=fresh) as later:
        assert [(s["requestId"], s["room"]) for s in later.welcome["persistent"]] == \
            [("kept", room)]
        m = await tagged(later, "paid")
        assert (m.subscription, m.data["status"]) == ("kept", "paid")
        await later.unsubscribe("kept")
    async with Client("127.0.0.1", gate.port, ticket=fresh) as last:
        assert "persistent" not in last.welcome
