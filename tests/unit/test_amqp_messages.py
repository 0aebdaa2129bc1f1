"""What an AMQP message becomes (broker.amqpsource.read_message): a trigger body for the one
set of trigger rules, or a named reason to dead-letter it; and the trigger id its
``message_id`` gives."""

from __future__ import annotations

import pytest

from broker.amqpsource import NotATrigger, read_message, trigger_id_for
from broker.triggers import check_trigger_id

ROOM = {"target": "chat", "customer": "1"}


def test_a_high_templar_body_is_a_trigger_body():
    assert read_message(b'{"rooms": [{"target": "chat", "customer": "1"}], "data": {"a": 1}}',
                        None, 1000) == {"rooms": [ROOM], "data": {"a": 1}}


def test_the_message_id_is_the_trigger_id_unless_the_body_has_one():
    body = b'{"rooms": [], "data": 1}'
    assert read_message(body, "order-17", 1000)["id"] == "order-17"
    assert read_message(b'{"rooms": [], "data": 1, "id": "own"}', "order-17", 1000)["id"] == \
        "own"
    assert "id" not in read_message(body, None, 1000)
    assert "id" not in read_message(body, "", 1000)


def test_a_message_id_that_is_no_trigger_id_gives_one_the_same_for_every_copy():
    for message_id in ["with spaces", "x" * 65, "é", "a/b"]:
        made = trigger_id_for(message_id)
        assert check_trigger_id(made) == made
        assert made == trigger_id_for(message_id)
        assert made.startswith("amqp:")
    assert trigger_id_for("with spaces") != trigger_id_for("with  spaces")


@pytest.mark.parametrize("body, cause", [
    (b"x" * 1001, "too-large"),
    (b"not json", "not-json"),
    (b"\xff\xfe", "not-json"),
    (b'{"a": NaN}', "not-json"),
    (b"[1]", "not-a-trigger"),
    (b'"rooms"', "not-a-trigger"),
])
def test_what_is_dead_lettered_before_the_trigger_rules(body, cause):
    with pytest.raises(NotATrigger) as refused:
        read_message(body, "m1", 1000)
    assert refused.value.cause == cause
