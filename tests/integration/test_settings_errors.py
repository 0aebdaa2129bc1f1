"""A malformed setting stops the real process at start with an error naming that setting and the
formats it accepts (issue 11, item 16). Before, ``BROKER_PROFILE_KEYS=agent=k1,super_agent=k2``
stopped daphne with ``BROKER_HISTORY: dictionary update sequence element #0 has length 1``.
"""

from __future__ import annotations

import pytest

from tests.harness import DAPHNE_ARGV, BrokerStartError

RUNBROKER = ["{python}", "manage.py", "runbroker", "--host", "127.0.0.1", "--port", "{port}",
             "--tcp-port", "0"]
GATE = ["{python}", "manage.py", "runtcpgate", "--host", "127.0.0.1", "--port", "{port}"]

# (setting, malformed value, a word of the accepted formats the error must show)
MALFORMED = [
    ("BROKER_PROFILE_KEYS", "agent=k1,super_agent=k2", "agent:KEY"),
    ("BROKER_PROFILE_KEYS", "wizard:k1", "super_agent"),
    ("BROKER_PROFILE_KEYS", '{"agent": 5}', "JSON object"),
    ("BROKER_PROFILE_KEYS", '{"agent": ', "JSON object"),
    ("BROKER_MAX_CONNECTIONS", "lots", "integer"),
    ("BROKER_MAX_CONNECTIONS", "-1", "integer"),
    ("BROKER_AUTH_TIMEOUT", "5s", "number"),
    ("BROKER_AUTH_TIMEOUT", "nan", "number"),
    ("BROKER_PUBLIC_STATUS", "maybe", "true"),
    ("BROKER_DUPLICATE_LOGIN", "kick", "replace"),
    ("BROKER_LOG_LEVEL", "LOUD", "WARNING"),
    ("BROKER_HISTORY", "[{", "JSON list"),
    ("BROKER_HISTORY", '[{"room": {"target": "news"}, "size": 0, "ttl": 60}]', "size"),
    ("BROKER_AUTH_DEADLINE", "soon", "number"),
]


@pytest.mark.parametrize("name, value, accepted", MALFORMED,
                         ids=[f"{n}={v[:12]}" for n, v, _ in MALFORMED])
def test_the_server_names_the_malformed_setting(broker_factory, name, value, accepted):
    with pytest.raises(BrokerStartError) as failed:
        broker_factory(start_timeout=15, **{name: value})
    message = str(failed.value)
    line = next((ln for ln in message.splitlines() if f"{name}: " in ln), None)
    assert line is not None, message
    assert accepted in line, line
    others = {n for n, _, _ in MALFORMED} - {name}
    assert not any(other in line for other in others), line


@pytest.mark.parametrize("argv", [DAPHNE_ARGV, RUNBROKER, GATE], ids=["daphne", "runbroker", "gate"])
def test_every_command_names_the_malformed_setting(broker_factory, argv):
    with pytest.raises(BrokerStartError) as failed:
        broker_factory(argv=argv, ready_path=None, start_timeout=15,
                       BROKER_PROFILE_KEYS="agent=k1,super_agent=k2")
    message = str(failed.value)
    assert "BROKER_PROFILE_KEYS" in message and "agent:KEY" in message, message
    assert "BROKER_HISTORY" not in message, message
