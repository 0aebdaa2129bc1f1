"""broker.tickets: minting and verifying connection tickets (docs/protocol.md "Connection
tickets"), and the memory ticket store's single use."""

from __future__ import annotations

import base64
import json

import pytest

from broker import errors
from broker.conf import conf
from broker.identity import Profile
from broker.stores.tickets import MemoryTickets
from broker.tickets import (
    CLOCK_SKEW, MAX_TICKET_CHARS, MintRefused, TicketRefused, encode, mint, verify,
)

SECRET = "tk_test_secret"
NOW = 1_700_000_000
BOB = {"login_id": "bob", "allowed_rooms": [{"target": "news"}], "profile": "super_agent",
       "publish_rooms": [{"target": "chat", "customer": "*"}]}


def refused(ticket: str, keys=(SECRET,), now: float = NOW) -> str:
    with pytest.raises(TicketRefused) as info:
        verify(ticket, keys, now)
    return info.value.reason


def test_round_trip_carries_the_identity_as_the_auth_api_would() -> None:
    ticket = encode(BOB, SECRET, 60, now=NOW)
    assert len(ticket) <= MAX_TICKET_CHARS
    assert set(ticket) <= set("0123456789abcdefABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "ghijklmnopqrstuvwxyz-_.")  # URL-safe as it is
    found = verify(ticket, (SECRET,), NOW + 1)
    assert (found.issued, found.expires) == (NOW, NOW + 60)
    assert found.identity.login_id == "bob" and found.identity.profile is Profile.SUPER_AGENT
    assert [r.original for r in found.identity.api_rooms] == [{"target": "news"}]
    assert found.identity.may_publish(found.identity.publish_rooms[0])
    # a fresh random id each time: the replay key
    assert verify(encode(BOB, SECRET, 60, now=NOW), (SECRET,), NOW).id != found.id
    assert found.remaining(NOW + 10) == 50 + CLOCK_SKEW


def test_a_tampered_payload_or_issued_time_is_invalid() -> None:
    issued, payload, mac = encode(BOB, SECRET, 60, now=NOW).split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["identity"]["login_id"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert refused(f"{issued}.{forged}.{mac}") == errors.TICKET_INVALID
    assert refused(f"{NOW + 1}.{payload}.{mac}") == errors.TICKET_INVALID
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert refused(f"{issued}.{payload}.{flipped}") == errors.TICKET_INVALID


def test_another_secret_or_tickets_off_is_invalid() -> None:
    ticket = encode(BOB, "someone else's", 60, now=NOW)
    assert refused(ticket) == errors.TICKET_INVALID
    assert refused(encode(BOB, SECRET, 60, now=NOW), keys=()) == errors.TICKET_INVALID


def test_expired_after_its_life_and_the_skew() -> None:
    ticket = encode(BOB, SECRET, 60, now=NOW)
    verify(ticket, (SECRET,), NOW + 60 + CLOCK_SKEW)  # within the clock-skew allowance
    assert refused(ticket, now=NOW + 61 + CLOCK_SKEW) == errors.TICKET_EXPIRED


@pytest.mark.parametrize("ticket", [
    "", "a.b", "1.2.3.4", f"{NOW}.!!!.{'0' * 64}", f"{NOW}.e30.{'0' * 63}", f"x.e30.{'0' * 64}",
    f"{NOW}.e30.{'G' * 64}",
])
def test_malformed_is_invalid(ticket: str) -> None:
    assert refused(ticket) == errors.TICKET_INVALID


def test_oversize_is_refused_to_mint_and_to_verify() -> None:
    big = {**BOB, "allowed_rooms": [{"target": "news", "n": str(i)} for i in range(400)]}
    with pytest.raises(MintRefused, match="over"):
        encode(big, SECRET, 60, now=NOW)
    # refused before any crypto: no secret is even tried
    assert refused("1" * (MAX_TICKET_CHARS + 1), keys=("never used",)) == errors.TICKET_INVALID


def test_rotation_mints_with_the_first_and_accepts_any() -> None:
    old = encode(BOB, "old", 60, now=NOW)
    new = encode(BOB, "new", 60, now=NOW)
    for ticket in (old, new):
        assert verify(ticket, ("new", "old"), NOW).identity.login_id == "bob"
    assert refused(old, keys=("new",)) == errors.TICKET_INVALID


def test_an_identity_the_auth_api_reader_refuses_is_not_minted() -> None:
    for bad in ({"login_id": "a/b"}, {"profile": "root"}, {"allowed_rooms": "news"}, []):
        with pytest.raises(MintRefused):
            encode(bad, SECRET, 60, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(MintRefused):
        encode(BOB, "", 60, now=NOW)
    for ttl in (0, -1, 3601):
        with pytest.raises(MintRefused):
            encode(BOB, SECRET, ttl, now=NOW)


@pytest.fixture
def settings_env(monkeypatch):
    def apply(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        conf.cache_clear()
    yield apply
    monkeypatch.undo()
    conf.cache_clear()


class _Anonymous:
    is_authenticated = False


class _Request:
    def __init__(self, user=None, who="carol"):
        if user is not None:
            self.user = user
        self.who = who


def identity_of(request) -> dict:
    return {"login_id": request.who, "allowed_rooms": [{"target": "news"}]}


def test_mint_reads_the_settings_and_the_identity_callable(settings_env) -> None:
    with pytest.raises(MintRefused, match="BROKER_TICKET_SECRET"):
        mint(_Request(), BOB)
    settings_env(BROKER_TICKET_SECRET="first, second", BROKER_TICKET_TTL="30")
    found = verify(mint(_Request(), BOB), ("second", "first"))
    assert found.identity.login_id == "bob" and found.expires - found.issued == 30
    assert refused(mint(_Request(), BOB), keys=("second",), now=found.issued) \
        == errors.TICKET_INVALID  # minted with the first secret
    with pytest.raises(MintRefused, match="BROKER_TICKET_IDENTITY"):
        mint(_Request())
    settings_env(BROKER_TICKET_IDENTITY=f"{__name__}.identity_of")
    assert verify(mint(_Request(), ttl=5), ("first",)).identity.login_id == "carol"
    with pytest.raises(MintRefused, match="anonymous"):
        mint(_Request(user=_Anonymous()))


async def test_the_memory_store_says_yes_once() -> None:
    store = MemoryTickets()
    assert await store.use("a", 60) is True
    assert await store.use("a", 60) is False
    assert await store.use("b", 0) is True
    assert await store.use("b", 60) is True  # forgotten once its ticket expired


def test_a_ticket_in_a_url_is_redacted_from_logs() -> None:
    from broker.logctx import redact

    assert redact("GET /ws/?resume=r&ticket=1700000000.eyJ2.abc HTTP/1.1") == \
        "GET /ws/?resume=***&ticket=*** HTTP/1.1"
