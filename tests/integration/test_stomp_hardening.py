"""Issue 11 through the TCP gate (``manage.py runtcpgate``), with stomp.py and raw sockets:

- regular-expression watches cannot freeze the process (item 1);
- hostile characters in a sender's identity cannot forge frames for a STOMP recipient (item 2);
- STOMP 1.2 for third-party clients: ``ack`` headers, ACK/NACK, content-type (item 19).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.gatehelpers import (
    STATIC_KEYS, JsonLines, RawStomp, start_gate, stomp_client,
)

pytestmark = pytest.mark.timeout(120)


def static_stomp(port: int, login: str, passcode: str, *, timeout: float = 5.0) -> RawStomp:
    """A standard-STOMP socket logged in with the static keys (PROTOCOL §2.2)."""
    raw = RawStomp(port, timeout=timeout)
    raw.send("CONNECT", **{"accept-version": "1.2", "host": "x", "login": login,
                           "passcode": passcode, "secret-key": STATIC_KEYS["BROKER_APP_KEY"]})
    connected = raw.recv()
    assert connected.command == "CONNECTED", connected
    return raw


def static_headers(login: str, passcode: str) -> dict[str, str]:
    return {"login": login, "passcode": passcode, "secret-key": STATIC_KEYS["BROKER_APP_KEY"]}


# --------------------------------------------------------------------------- item 1

# Patterns the old syntactic cost check let through, with a login they backtrack on for
# minutes in Python's re (measured on the old code: (a|aa)* on 44 a's ~2.5 min; 60 ``.?``
# against a 20-character login: hours). Each login fails to match.
EVIL_WATCHES = {
    # verbose mode: the space between ")" and "*" hid the quantified group from the check
    "verbose-quantified-group": (r"(?x) /agent/ ( a | aa ) * b", "a" * 44 + "-{u}"),
    # "?" was not counted as a quantifier
    "optional-dots": ("/agent/" + ".?" * 60 + "!", "x{u}"),
}


@pytest.mark.parametrize("name", list(EVIL_WATCHES))
def test_a_regex_watch_cannot_freeze_the_process(name, broker_factory, unique):
    pattern, login = EVIL_WATCHES[name]
    login = login.format(u=unique)
    gate = start_gate(broker_factory, **STATIC_KEYS)
    watcher = static_stomp(gate.port, f"sup{unique}", "sk")
    watcher.send("SUBSCRIBE", id="w", destination=pattern, receipt="w",
                 **{"destination-type": "1"})
    answer = watcher.recv()
    # Watched (matched in linear time), or refused with a named error (RE2 has no verbose mode).
    assert (answer.command, answer.headers.get("receipt-id")) == ("RECEIPT", "w") or (
        answer.command, answer.headers.get("message")) == ("ERROR", "invalid-pattern"), answer
    target = static_stomp(gate.port, login, "ak")
    # Answers are bounded generously (15 s): the old code froze for minutes (the sender's
    # receipt never came); RE2 takes microseconds.
    bystander = static_stomp(gate.port, f"by{unique}", "ak", timeout=15)
    sender = static_stomp(gate.port, f"s{unique}", "ak", timeout=15)
    sender.send("SEND", "hello", destination=f"/agent/{login}", receipt="s1")
    assert sender.recv().headers == {"receipt-id": "s1"}
    got = target.recv()
    assert (got.command, got.body) == ("MESSAGE", b"hello")
    # the direct message has reached the hub (its target has it): the watches were matched
    # on the way; a bystander's request is answered promptly
    bystander.send("SUBSCRIBE", id="me", destination=f"/agent/by{unique}", receipt="ping")
    assert bystander.recv().headers == {"receipt-id": "ping"}
    if answer.command == "RECEIPT":
        # the watch still works: a destination it matches is watched, and only that one
        matching = f"{unique}!"
        other = static_stomp(gate.port, matching, "ak")
        sender.send("SEND", "seen", destination=f"/agent/{matching}", receipt="s2")
        assert sender.recv().headers == {"receipt-id": "s2"}
        assert other.recv().body == b"seen"
        copy = watcher.recv()
        assert copy.command == "MESSAGE" and copy.body == b"seen"
        assert copy.headers["destination"] == f"/agent/{matching}"


def test_many_costly_regex_watches_do_not_stall_the_event_loop(broker_factory, unique):
    """RE2 is linear, but a pattern that compiles to a large program still costs milliseconds
    per new destination (5-10 ms here): 127 such watches cost ~1 s per direct message. They are
    matched off the event loop, so they delay only the watchers' copies, never another
    client's answer. Asserted on order: a bystander asking after the last message reached its
    target is answered before the watcher's copy of that message is written (on the code that
    matched on the event loop, the copy always came first: the loop wrote it before it could
    read the bystander's request)."""
    import random
    import select

    gate = start_gate(broker_factory, **STATIC_KEYS)
    watchers = []
    for w in range(8):
        watcher = static_stomp(gate.port, f"sup{w}-{unique}", "sk", timeout=120)
        for i in range(16):
            k = 20 + (i % 9)
            watcher.send("SUBSCRIBE", id=f"w{i}",
                         destination=f"/agent/((a|b){{0,{k}}}){{{k}}}x{w}-{i}",
                         receipt=f"r{i}", **{"destination-type": "1"})
            assert watcher.recv().headers == {"receipt-id": f"r{i}"}
        watchers.append(watcher)
    # one more watch, of one exact destination: its copy is the observable one
    watchers[0].send("UNSUBSCRIBE", id="w15", receipt="u")
    assert watchers[0].recv().headers == {"receipt-id": "u"}
    watchers[0].send("SUBSCRIBE", id="exact", destination=f"/agent/seen{unique}",
                     receipt="exact", **{"destination-type": "1"})
    assert watchers[0].recv().headers == {"receipt-id": "exact"}
    rng = random.Random(unique)
    logins = ["".join(rng.choice("ab") for _ in range(250)) for _ in range(8)]
    targets = [static_stomp(gate.port, login, "ak", timeout=120) for login in logins]
    seen = static_stomp(gate.port, f"seen{unique}", "ak", timeout=120)
    bystander = static_stomp(gate.port, f"by{unique}", "ak", timeout=120)
    sender = static_stomp(gate.port, f"s{unique}", "ak")
    for login in logins:
        sender.send("SEND", "x", destination=f"/agent/{login}")
    sender.send("SEND", "watched", destination=f"/agent/seen{unique}")
    for target in targets:
        assert target.recv().body == b"x"
    assert seen.recv().body == b"watched"
    bystander.send("SUBSCRIBE", id="me", destination=f"/agent/by{unique}", receipt="ping")
    assert bystander.recv().headers == {"receipt-id": "ping"}
    readable, _, _ = select.select([watchers[0].sock], [], [], 0)
    assert not readable and not watchers[0].pending, "the watcher's copy came first"
    copy = watchers[0].recv()  # and it does come, once the watches are matched
    assert (copy.command, copy.body, copy.headers["subscription"]) == ("MESSAGE", b"watched",
                                                                       "exact")


# --------------------------------------------------------------------------- item 2


@pytest.mark.parametrize("login", [
    "evil\x00ERROR",
    "evil\nERROR\nmessage:forged\n\nforged\x00ERROR",
    "evil\r\n\r\nERROR\r\n",
    "evil:\\c\\n\\",
], ids=["nul", "lf", "crlf", "escapes"])
def test_a_hostile_sender_login_cannot_forge_frames(login, broker_factory, unique):
    gate = start_gate(broker_factory, **STATIC_KEYS)
    bob, b = stomp_client(gate.port, headers=static_headers(f"bob{unique}", "ak"))
    assert b.next("connected")
    sender = JsonLines(gate.port)
    sender.send({"type": "connect", "app_key": STATIC_KEYS["BROKER_APP_KEY"],
                 "login_id": unique + login, "profile_key": "ak"})
    welcome = sender.recv()
    if welcome.get("type") == "welcome":  # not refused at the identity boundary
        sender.send({"type": "send", "to": f"/agent/bob{unique}", "data": "forged body",
                     "requestId": 1})
        assert sender.recv()["code"] == "success"
        msg = b.next("message")
        assert msg.body == "forged body"
        assert msg.headers["origin"] == "/agent/" + (unique + login).replace("\x00", "\ufffd")
    # whatever happened, bob's stream is intact: the next thing it gets is its own receipt
    bob.subscribe(f"/agent/bob{unique}", id="inbox", receipt="sync")
    kind, frame = b.next()
    assert (kind, frame.headers.get("receipt-id")) == ("receipt", "sync"), (kind, frame)
    assert bob.is_connected()
    bob.disconnect()


# --------------------------------------------------------------------------- item 19


@pytest.mark.parametrize("mode", ["client-individual", "client"])
def test_stomp_py_acknowledges_messages(mode, broker_factory, auth_api, unique):
    room = {"target": "acks", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "publish_rooms": [room],
                            "login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    conn, listener = stomp_client(gate.port, headers={"token": unique})
    listener.next("connected")
    conn.subscribe("/room/" + json.dumps(room), id="s", ack=mode, receipt="sub")
    listener.receipt("sub")
    conn.send("/room/" + json.dumps(room), json.dumps({"n": 1}),
              content_type="application/json", receipt="p1")
    msg = listener.next("message")  # the publisher's own copy comes before its receipt
    listener.receipt("p1")
    assert msg.headers["ack"], msg.headers
    conn.ack(msg.headers["ack"], receipt="a1")
    listener.receipt("a1")
    conn.send("/room/" + json.dumps(room), json.dumps({"n": 2}),
              content_type="application/json", receipt="p2")
    second = listener.next("message")
    listener.receipt("p2")
    assert second.headers["ack"] != msg.headers["ack"]
    conn.nack(second.headers["ack"], receipt="n1")  # accepted: the message is dropped
    listener.receipt("n1")
    # an id this connection never issued is refused: ERROR, then the connection closes
    conn.ack("no-such-ack-id", receipt="bad")
    err = listener.next("error")
    assert err.headers["message"] == "invalid-message"
    listener.next("disconnected")


def test_an_auto_subscription_has_no_ack_header(broker_factory, auth_api, unique):
    room = {"target": "auto", "id": unique}
    auth_api.allow(unique, {"allowed_rooms": [room], "publish_rooms": [room],
                            "login_id": f"a{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    conn, listener = stomp_client(gate.port, headers={"token": unique})
    listener.next("connected")
    conn.subscribe("/room/" + json.dumps(room), id="s", receipt="sub")
    listener.receipt("sub")
    conn.send("/room/" + json.dumps(room), "{}", content_type="application/json")
    assert "ack" not in listener.next("message").headers
    conn.disconnect()


def test_direct_messages_keep_their_content_type_and_can_be_acknowledged(
        broker_factory, auth_api, unique):
    auth_api.allow(f"a{unique}", {"login_id": f"a{unique}"})
    auth_api.allow(f"b{unique}", {"login_id": f"b{unique}"})
    auth_api.allow(f"j{unique}", {"login_id": f"j{unique}"})
    gate = start_gate(broker_factory, auth_api=auth_api)
    alice, a = stomp_client(gate.port, headers={"token": f"a{unique}"})
    a.next("connected")
    bob, b = stomp_client(gate.port, headers={"token": f"b{unique}"})
    b.next("connected")
    bob.subscribe(f"/agent/b{unique}", id="inbox", ack="client-individual", receipt="in")
    b.receipt("in")
    js = JsonLines(gate.port)
    js.send({"type": "connect", "token": f"j{unique}"})
    assert js.recv()["type"] == "welcome"

    alice.send(f"/agent/b{unique}", "<n>1</n>", content_type="application/xml", receipt="x")
    a.receipt("x")
    msg = b.next("message")
    assert msg.body == "<n>1</n>"
    assert msg.headers["content-type"] == "application/xml"
    assert msg.headers["subscription"] == "inbox" and msg.headers["ack"]
    bob.ack(msg.headers["ack"], receipt="ok")
    b.receipt("ok")
    # a JSON receiver sees the text as data (the content-type is not JSON)
    alice.send(f"/agent/j{unique}", "<n>2</n>", content_type="application/xml", receipt="y")
    a.receipt("y")
    got = js.recv()
    assert got["type"] == "message" and got["data"] == "<n>2</n>"
    # a JSON content-type: a JSON receiver sees the value; a STOMP one the same text and type
    alice.send(f"/agent/b{unique}", '{"k": [1]}', content_type="application/json;charset=utf-8")
    msg = b.next("message")
    assert msg.body == '{"k": [1]}'
    assert msg.headers["content-type"] == "application/json;charset=utf-8"
    # no content-type: text/plain, as before
    alice.send(f"/agent/b{unique}", "words", receipt="z")
    a.receipt("z")
    msg = b.next("message")
    assert msg.body == "words" and msg.headers["content-type"] == "text/plain"
    for c in (alice, bob):
        c.disconnect()
