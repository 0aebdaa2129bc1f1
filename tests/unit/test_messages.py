"""broker.messages: every message between processes survives its wire form, and an unknown
one is recognised as such (a newer process during a rolling upgrade)."""

import json

import pytest

from broker import disconnect
from broker.messages import Close, Confirmed, DirectMessage, Probe, Trigger, from_wire

MESSAGES = [
    Trigger("t1", ['{"a":"1"}'], '{"x":1}'),
    Trigger("t2", ['{"a":"1"}', '{"b":"*"}'], "null", {'{"a":"1"}': 7}),
    Trigger("t3", ['{"a":"1"}'], "1", exclude="0123abcd0123abcd"),
    DirectMessage("m1", '{"client":"bob","profile":"agent"}', "agent/bob", None,
                  '{"type":"message"}', '"hi"'),
    DirectMessage("m2", '{"client":"bob","profile":"agent"}', "agent/bob", "agent/amy",
                  '{"type":"message"}', '"hi"', "hi", "text/plain", ack=True),
    Confirmed("m2", "agent/amy", "agent/bob"),
    Close(disconnect.KICKED, conn_id="c1"),
    Close(disconnect.REPLACED, destination="agent/bob", except_id="c2"),
    Close(disconnect.REPLACED, destination="agent/bob", except_id="c2", opened_before=1.5e9),
    Probe("tok"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    assert from_wire(message.to_wire()) == message  # type: ignore[attr-defined]


def test_wire_form_is_what_earlier_versions_send() -> None:
    assert Trigger("t", ["r"], "1").to_wire() == {"type": "cb.trigger", "id": "t",
                                                  "rooms": ["r"], "data": "1"}
    assert Close(disconnect.KICKED, login_id="bob").to_wire() == {
        "type": "cb.control", "action": "close", "code": 4010, "reason": "kicked",
        "login_id": "bob"}
    assert Confirmed("m", "a", "b").to_wire()["id"] == "confirmed.m"


def test_a_trigger_without_exclude_is_sent_as_before_and_an_old_reader_ignores_it() -> None:
    assert "exclude" not in Trigger("t", ["r"], "1").to_wire()
    wire = Trigger("t", ["r"], "1", exclude="c1").to_wire()
    assert wire["exclude"] == "c1"
    # an earlier version read only type, id, rooms, data and offsets: nothing else changed
    assert {k: v for k, v in wire.items() if k != "exclude"} == Trigger("t", ["r"], "1").to_wire()


def test_unknown_messages_are_none() -> None:
    assert from_wire({"type": "cb.future"}) is None
    assert from_wire({"type": "cb.control", "action": "reboot"}) is None


def test_close_matches() -> None:
    close = Close(disconnect.REPLACED, destination="agent/bob", except_id="new")
    assert close.matches("old", "bob", "agent/bob", 1.0)
    assert not close.matches("new", "bob", "agent/bob", 1.0)
    assert not close.matches("other", "amy", "agent/amy", 1.0)
    assert Close(disconnect.KICKED, login_id="bob").matches("x", "bob", None, 1.0)


def test_a_replace_never_closes_a_connection_newer_than_its_replacer() -> None:
    """A replace that arrives late, behind a newer connect of the same login (another
    process's, through Redis), closes only the connections opened before the replacing one."""
    close = Close(disconnect.REPLACED, destination="agent/bob", except_id="mid",
                  opened_before=100.0)
    assert close.matches("old", "bob", "agent/bob", 99.5)
    assert not close.matches("newer", "bob", "agent/bob", 100.2)
    assert from_wire(json.loads(json.dumps(close.to_wire()))) == close


def test_a_trigger_body_names_the_connection_it_excludes() -> None:
    from broker.triggers import InvalidTrigger, parse_trigger

    rooms = [{"target": "news"}]
    assert parse_trigger({"rooms": rooms, "data": 1}).exclude is None
    assert parse_trigger({"rooms": rooms, "data": 1, "exclude": "ab12"}).exclude == "ab12"
    for bad in (7, "", "a b", "x" * 65):
        with pytest.raises(InvalidTrigger, match="exclude must be a connection id"):
            parse_trigger({"rooms": rooms, "data": 1, "exclude": bad})
