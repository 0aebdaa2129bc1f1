"""The profile matrix (PROTOCOL §2.3, §3.2, §6) against the sans-I/O session, and static keys (§2.2).

Every profile is given the same auth API answer (one API room, one publish room), so each row of
the tables below differs only by what the profile rules add or take away. What needs the cluster
(destination-not-found for a client nobody holds, deliveries, the admin results) is pinned by
tests/integration/test_profiles_cluster.py; here a send to a well-formed destination yields the
``SendDirect`` effect the driver checks against the cluster.
"""

from __future__ import annotations

import json

import pytest

from broker import errors
from broker.codecs.jsoncodec import JsonCodec
from broker.identity import (
    PROFILE_RULES, Identity, InvalidIdentity, Profile, Realm, address_of, client_room,
    destination_of, parse_address, public_destination, public_room, resolve_destination,
    identity_from_api, identity_from_static_keys, parse_destination,
)
from broker.effects import Kick, ListConnections, ReadStats, JoinRoom, PublishRooms, QueryStatus, SendDirect
from broker.replies import Error, Success
from broker.requests import Admin, Publish, Send, Status, Subscribe
from broker.session import Session
from tests.unit.sessions import rules
from rooms import parse_room

OWN = {"target": "chat", "customer": "*"}           # the API's allowed room
OTHER = {"target": "news"}                          # a room nobody was given
WATCH_AGENTS = {"client": "*", "profile": "agent"}
WATCH_SUPERS = {"client": "*", "profile": "super_agent"}
WATCH_SERVICES = {"client": "*", "profile": "service"}
AGENT_X = {"client": "x", "profile": "agent"}       # one specific client's room
SUPER_X = {"client": "x", "profile": "super_agent"}
SERVICE_X = {"client": "x", "profile": "service"}
ADMIN_X = {"client": "x", "profile": "admin"}
PUB_IN = {"target": "chat", "customer": "1"}        # inside publish_rooms
PUB_OUT = {"target": "orders", "customer": "1"}     # outside publish_rooms

PROFILES = ("agent", "super_agent", "service", "admin")

OK = "success"
JOIN = "join"          # success, and the hub is asked to join the room
SEND = "send"          # success, and the driver routes a direct message
PUB = "publish"        # success, and the driver publishes a trigger
ADMIN = "admin"        # the driver runs an admin action
STATUS = "status"      # the driver queries the cluster status
RNF = errors.ROOM_NOT_FOUND
PCS = errors.PROFILE_CANNOT_SUBSCRIBE
DNF = errors.DESTINATION_NOT_FOUND
RNA = errors.ROOM_NOT_ALLOWED
MTNA = errors.MESSAGE_TYPE_NOT_ALLOWED


def session(profile: str, *, public_status: bool = False) -> Session:
    ident = identity_from_api({"allowed_rooms": [OWN], "login_id": "me", "profile": profile,
                               "publish_rooms": [OWN]})
    return rules(ident, max_subscriptions=64, public_status=public_status)


def outcome(step) -> str:
    """What one request came to, as one word of the tables."""
    if isinstance(step.reply, Error):
        assert step.effect is None, "an error must not carry an effect"
        return step.reply.code
    effect = step.effect
    if isinstance(effect, JoinRoom):
        assert isinstance(step.reply, Success)
        return JOIN
    if isinstance(effect, SendDirect):
        assert isinstance(step.reply, Success)
        return SEND
    if isinstance(effect, PublishRooms):
        assert isinstance(step.reply, Success)
        return PUB
    if isinstance(effect, (ListConnections, ReadStats, Kick)):
        assert step.reply is None
        return ADMIN
    if isinstance(effect, QueryStatus):
        assert step.reply is None
        return STATUS
    assert effect is None and isinstance(step.reply, Success), step
    return OK


# One row per request; the columns are agent, super_agent, service, admin.
MATRIX = [
    # -- subscribe: rooms
    ("subscribe own API room", Subscribe(1, OWN), (JOIN, JOIN, JOIN, PCS)),
    ("subscribe a narrower own room", Subscribe(1, PUB_IN), (JOIN, JOIN, JOIN, PCS)),
    ("subscribe another room", Subscribe(1, OTHER), (RNF, RNF, RNF, PCS)),
    ("subscribe watch agents", Subscribe(1, WATCH_AGENTS), (RNF, JOIN, JOIN, PCS)),
    ("subscribe watch super agents", Subscribe(1, WATCH_SUPERS), (RNF, RNF, JOIN, PCS)),
    ("subscribe watch services", Subscribe(1, WATCH_SERVICES), (RNF, RNF, RNF, PCS)),
    ("subscribe one agent's room", Subscribe(1, AGENT_X), (RNF, JOIN, JOIN, PCS)),
    ("subscribe one super agent's room", Subscribe(1, SUPER_X), (RNF, RNF, JOIN, PCS)),
    ("subscribe one service's room", Subscribe(1, SERVICE_X), (RNF, RNF, RNF, PCS)),
    ("subscribe one admin's room", Subscribe(1, ADMIN_X), (RNF, RNF, RNF, PCS)),
    ("subscribe own client room", Subscribe(1, {"client": "me", "profile": "agent"}),
     (RNF, JOIN, JOIN, PCS)),
    # -- send: any well-formed client destination is routed; existence is the cluster's call
    ("send to an agent", Send(1, "/agent/bob", {"hi": 1}), (SEND,) * 4),
    ("send to a super agent", Send(1, "/super_agent/sue", "x"), (SEND,) * 4),
    ("send to a service", Send(1, "/service/billing", "x"), (SEND,) * 4),
    ("send to an admin", Send(1, "/admin/root", "x"), (SEND,) * 4),
    ("send to a room-like name", Send(1, "bob", "x"), (DNF,) * 4),
    ("send to an unknown profile", Send(1, "/guest/bob", "x"), (DNF,) * 4),
    ("send to a profile with no login", Send(1, "/agent/", "x"), (DNF,) * 4),
    # -- publish
    ("publish inside publish_rooms", Publish(1, [PUB_IN], 1), (PUB, PUB, PUB, PUB)),
    ("publish to the wildcard publish room", Publish(1, [OWN], 1), (PUB, PUB, PUB, PUB)),
    ("publish outside publish_rooms", Publish(1, [PUB_OUT], 1), (RNA, RNA, PUB, RNA)),
    ("publish inside and outside", Publish(1, [PUB_IN, PUB_OUT], 1), (RNA, RNA, PUB, RNA)),
    ("publish to a client room", Publish(1, [AGENT_X], 1), (RNA, RNA, PUB, RNA)),
    # -- admin actions and status
    ("admin connections", Admin(1, "connections"), (MTNA, MTNA, MTNA, ADMIN)),
    ("admin kick", Admin(1, "kick", {"login_id": "bob"}), (MTNA, MTNA, MTNA, ADMIN)),
    ("admin stats", Admin(1, "stats"), (MTNA, MTNA, MTNA, ADMIN)),
    ("admin unknown action", Admin(1, "explode"), (MTNA, MTNA, MTNA, errors.UNKNOWN_ACTION)),
    ("status", Status(1), (MTNA, MTNA, MTNA, STATUS)),
]

CASES = [pytest.param(profile, req, expected[i], id=f"{profile}: {name}")
         for name, req, expected in MATRIX for i, profile in enumerate(PROFILES)]


@pytest.mark.parametrize("profile, request_, expected", CASES)
def test_profile_matrix(profile, request_, expected):
    assert outcome(session(profile).handle(request_)) == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_public_status_opens_status_to_every_profile(profile):
    assert outcome(session(profile, public_status=True).handle(Status(1))) == STATUS


@pytest.mark.parametrize("profile, expected", [
    ("agent", [OWN]),
    ("super_agent", [OWN, WATCH_AGENTS]),
    ("service", [OWN, WATCH_AGENTS, WATCH_SUPERS]),
    ("admin", []),
])
def test_effective_allowed_rooms_in_the_welcome(profile, expected):
    ident = session(profile).identity
    ht = json.loads(JsonCodec(rich=False).welcome(ident, "c1", None))
    assert ht == {"is_authorized": True, "allowed_rooms": expected}
    rich = json.loads(JsonCodec(rich=True).welcome(ident, "c1", None))
    assert (rich["profile"], rich["login_id"], rich["destination"]) == (
        profile, "me", f"/{profile}/me")


def test_api_rooms_are_not_duplicated_by_profile_rules():
    ident = identity_from_api({"allowed_rooms": [WATCH_AGENTS, OWN, WATCH_AGENTS],
                               "login_id": "s", "profile": "service"})
    assert [r.original for r in ident.allowed_rooms] == [WATCH_AGENTS, OWN, WATCH_SUPERS]


def test_send_effect_carries_the_destination_and_encoded_data():
    step = session("agent").handle(Send("r", "/agent/bob", {"b": [1, "é"]}))
    assert step.effect == SendDirect("/agent/bob", '{"b":[1,"é"]}', None)
    assert step.reply == Success("r")


def test_rules_table_is_complete_and_destinations_round_trip():
    assert set(PROFILE_RULES) == set(Profile)
    assert [p.code for p in Profile] == [1, 2, 3, 4]
    for p in Profile:
        dest = destination_of(p, "bob")
        assert dest == f"/{p.value}/bob"
        assert parse_destination(dest) == (p, "bob")
        assert client_room(Realm.API, p, "bob") == parse_room({"client": "bob",
                                                               "profile": p.value})
    # a login never holds '/', '*' or a control character: no such destination (issue 11)
    for bad in ("/agent/a/b", "/agent/*", "/agent/a*", "/agent/a\x00b", "/agent/"):
        assert parse_destination(bad) is None
    assert parse_destination("/agent/*", wildcard=True) == (Profile.AGENT, "*")
    assert parse_destination("agent/bob") is None
    assert parse_destination("/agent") is None


def test_identity_without_login_has_no_destination():
    ident = identity_from_api({"allowed_rooms": [OWN]})
    assert ident.profile is Profile.AGENT and ident.destination is None
    assert ident.client_room is None


@pytest.mark.parametrize("body", [
    {"profile": "root"},
    {"profile": 3},
    {"login_id": ""},
    {"login_id": "a/b"},
    {"login_id": 7},
    {"login_id": "a\x00b"},
    {"login_id": "a\u2028b"},
    {"login_id": "*"},
    {"login_id": "x" * 257},
    {"publish_rooms": [{"a": None}]},
    {"publish_rooms": {"a": 1}},
])
def test_identity_from_api_rejects(body):
    with pytest.raises(InvalidIdentity):
        identity_from_api(body)


# ------------------------------------------------------------------ static keys (§2.2)

KEYS = {"agent": "k-agent", "super_agent": "k-super", "service": "k-service", "admin": "k-admin"}


def static(app_key="app-secret", login="bob", profile_key="k-agent") -> Identity:
    return identity_from_static_keys(app_key, login, profile_key, expected_app_key="app-secret",
                                     profile_keys=KEYS)


@pytest.mark.parametrize("profile", PROFILES)
def test_static_keys_choose_the_profile(profile):
    ident = static(profile_key=KEYS[profile])
    assert ident.profile == Profile(profile)
    assert ident.login_id == "bob" and ident.public_destination == f"/{profile}/bob"
    # the static-key realm (issue 11): its own address and rooms, shown as the contract's
    assert ident.realm is Realm.STATIC and ident.destination == f"static:/{profile}/bob"
    assert ident.client_room.original == {"client": "bob", "profile": profile,
                                          "realm": "static"}
    assert ident.api_rooms == () and ident.publish_rooms == ()
    expected = {"agent": [], "super_agent": [WATCH_AGENTS], "admin": [],
                "service": [WATCH_AGENTS, WATCH_SUPERS]}[profile]
    assert ident.shown_rooms == expected
    assert [r.original for r in ident.allowed_rooms] == [
        {**room, "realm": "static"} for room in expected]
    assert [ident.local_room(parse_room(r)) for r in expected] == list(ident.allowed_rooms)


def test_addresses_and_realms_round_trip():
    for realm in Realm:
        for p in Profile:
            address = address_of(realm, p, "bob")
            assert parse_address(address) == (realm, p, "bob")
            assert public_destination(address) == f"/{p.value}/bob"
            assert resolve_destination(realm, f"/{p.value}/bob") == address
            assert public_room(client_room(realm, p, "bob")) == client_room(Realm.API, p, "bob")
    assert address_of(Realm.API, Profile.AGENT, "bob") == "/agent/bob"  # the contract's form
    for bad in ("api:/agent/bob", "other:/agent/bob", "static:agent/bob", "static:/agent/*",
                "static:/agent/a/b", "agent/bob"):
        assert parse_address(bad) is None, bad
    # a client names a destination of its own realm only, and one client only
    assert resolve_destination(Realm.API, "static:/agent/bob") is None
    assert resolve_destination(Realm.STATIC, "/agent/*") is None
    # only a static client room loses its realm key when shown
    odd = parse_room({"realm": "static", "x": 1})
    assert public_room(odd) is odd


@pytest.mark.parametrize("kwargs, reason", [
    ({"app_key": "wrong"}, errors.INVALID_APP_KEY),
    ({"app_key": ""}, errors.INVALID_APP_KEY),
    ({"app_key": "wrong", "profile_key": "wrong"}, errors.INVALID_APP_KEY),
    ({"profile_key": "wrong"}, errors.INVALID_PROFILE_KEY),
    ({"profile_key": ""}, errors.INVALID_PROFILE_KEY),
    # keys right, login wrong: the login is named (issue 11), not the keys
    ({"login": ""}, errors.INVALID_LOGIN),
    ({"login": "a/b"}, errors.INVALID_LOGIN),
    ({"login": "evil\x00ERROR"}, errors.INVALID_LOGIN),
    ({"login": "*"}, errors.INVALID_LOGIN),
    # keys wrong: the keys are named whatever the login
    ({"login": "*", "profile_key": "wrong"}, errors.INVALID_PROFILE_KEY),
    # a lone surrogate (JSON text can carry one) is a wrong key, not a crash
    ({"app_key": "\ud800"}, errors.INVALID_APP_KEY),
    ({"profile_key": "\ud800"}, errors.INVALID_PROFILE_KEY),
])
def test_static_keys_refusals_have_the_contract_texts(kwargs, reason):
    with pytest.raises(InvalidIdentity) as info:
        static(**kwargs)
    assert str(info.value) == reason
    assert errors.INVALID_APP_KEY == "Invalid Application Secret Key."
    assert errors.INVALID_PROFILE_KEY == "Invalid Profile/Passcode."


def test_static_keys_without_a_configured_app_key_refuse_everyone():
    with pytest.raises(InvalidIdentity) as info:
        identity_from_static_keys("", "bob", "k-agent", expected_app_key="", profile_keys=KEYS)
    assert str(info.value) == errors.INVALID_APP_KEY


def test_what_an_identity_derives_is_made_once() -> None:
    """The hub, the codecs and the session read a connection's address, destination and
    client room for every connect, close and kick: they are made with the identity, and the
    watch rooms of a profile once for every identity of it."""
    from broker.identity import Identity, Profile, client_room, identity_from_api

    bob = identity_from_api({"login_id": "bob", "profile": "super_agent"})
    assert bob.client_room is bob.client_room
    assert bob.client_room == client_room("api", Profile.SUPER_AGENT, "bob")
    assert (bob.destination, bob.public_destination) == ("/super_agent/bob", "/super_agent/bob")
    amy = identity_from_api({"login_id": "amy", "profile": "super_agent"})
    assert amy.allowed_rooms[0] is bob.allowed_rooms[0]  # {"client": "*", "profile": "agent"}
    anon = Identity()
    assert (anon.destination, anon.public_destination, anon.client_room) == (None, None, None)
    # derived fields do not take part in equality
    assert identity_from_api({"login_id": "bob", "profile": "super_agent"}) == bob
