"""Who a connection is: Identity, the four profiles, and the profile rules (PROTOCOL §2).

Everything a profile may do beyond its API rooms is in PROFILE_RULES, one row per profile;
no other module branches on a profile's name.

Realms (issue 11): a login comes from the auth API or from static keys, and the two are two
namespaces. A client is (realm, profile, login); ``client_room`` and ``address_of`` are the one
place that turns it into the room its direct messages are routed through and the address the
registry, the duplicate-login policy, acknowledged messages and resume state are keyed by.
The auth API's realm keeps the contract's forms exactly (room ``{"client","profile"}``, address
``/agent/bob``); the static-key realm's room has a third key ``"realm": "static"`` and its
address is ``static:/agent/bob``. Clients never see either form of the static realm: they name
and are shown ``/agent/bob`` and ``{"client": .., "profile": ..}``, read in their own realm
(``Identity.local_room``, ``resolve_destination``; ``public_room``, ``public_destination``).
"""

from __future__ import annotations

import hmac
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Any, overload

from rooms import WILDCARD, InvalidRoom, Room, parse_room, permitted

from . import errors


class Profile(StrEnum):
    AGENT = "agent"
    SUPER_AGENT = "super_agent"
    SERVICE = "service"
    ADMIN = "admin"

    @property
    def code(self) -> int:
        """The Communication Broker's numeric profile code (CONNECTED ``profile-code``)."""
        return _PROFILE_CODES[self]


_PROFILE_CODES = {Profile.AGENT: 1, Profile.SUPER_AGENT: 2, Profile.SERVICE: 3, Profile.ADMIN: 4}


@dataclass(frozen=True)
class ProfileRule:
    watches: tuple[Profile, ...] = ()  # may subscribe to {"client": "*", "profile": p}
    can_subscribe: bool = True
    publish_anywhere: bool = False  # the trusted backend
    admin: bool = False  # may use the admin actions (§6) and always see status


PROFILE_RULES: dict[Profile, ProfileRule] = {
    Profile.AGENT: ProfileRule(),
    Profile.SUPER_AGENT: ProfileRule(watches=(Profile.AGENT,)),
    Profile.SERVICE: ProfileRule(
        watches=(Profile.AGENT, Profile.SUPER_AGENT), publish_anywhere=True
    ),
    Profile.ADMIN: ProfileRule(can_subscribe=False, admin=True),
}


class Realm(StrEnum):
    """Where a login comes from; logins of two realms never name the same client."""

    API = "api"
    STATIC = "static"


REALM_KEY = "realm"
_CLIENT_KEYS = frozenset({"client", "profile"})


def client_room(realm: Realm | str, profile: Profile | str, login_id: str) -> Room:
    """The room a client owns (``login_id`` ``*``: every client of that profile and realm);
    direct messages to it are routed through it, and watching it watches the client."""
    room: dict[str, str] = {"client": login_id, "profile": str(profile)}
    if realm != Realm.API:
        room[REALM_KEY] = str(realm)
    return parse_room(room)


def destination_of(profile: Profile | str, login_id: str) -> str:
    """The destination clients name and are shown: ``/agent/bob``, whatever the realm."""
    return f"/{profile}/{login_id}"


def address_of(realm: Realm | str, profile: Profile | str, login_id: str) -> str:
    """The realm-qualified destination everything inside the broker is keyed by."""
    dest = destination_of(profile, login_id)
    return dest if realm == Realm.API else f"{realm}:{dest}"


def parse_address(address: str) -> tuple[Realm, Profile, str] | None:
    """``address_of``'s inverse: (realm, profile, login), or None."""
    realm, dest = Realm.API, address
    if not address.startswith("/"):
        prefix, _, dest = address.partition(":")
        try:
            realm = Realm(prefix)
        except ValueError:
            return None
        if realm == Realm.API:
            return None
    target = parse_destination(dest)
    return None if target is None else (realm, *target)


@overload
def public_destination(address: str) -> str: ...
@overload
def public_destination(address: None) -> None: ...
def public_destination(address: str | None) -> str | None:
    """What a client is shown of an address: ``static:/agent/bob`` -> ``/agent/bob``."""
    if address is None or address.startswith("/"):
        return address
    return address.partition(":")[2]


def resolve_destination(realm: Realm, dest: str) -> str | None:
    """The address of the client a destination names, read in the sender's realm (a client
    cannot name another realm's clients). None when it names no single client."""
    target = parse_destination(dest)
    return None if target is None else address_of(realm, *target)


def public_room(room: Room) -> Room:
    """What a client is shown of a room: a static-realm client room without its realm key."""
    original = room.original
    if set(original) == _CLIENT_KEYS | {REALM_KEY} and original[REALM_KEY] != Realm.API:
        return parse_room({k: v for k, v in original.items() if k != REALM_KEY})
    return room


def public_room_key(key: str) -> str:
    """``public_room`` of a canonical room key (cheap for every room but a static client's)."""
    return public_room(Room.from_key(key)).key if f'"{REALM_KEY}":' in key else key


def parse_destination(dest: str, *, wildcard: bool = False) -> tuple[Profile, str] | None:
    """``/agent/bob`` -> (AGENT, "bob"); None when it is not a client destination.

    The login must be one ``validate_login`` accepts; ``wildcard``: ``/agent/*`` (a watch of
    every agent, for subscriptions) is accepted too. A send names one client: never ``*``.
    """
    parts = dest.split("/", 2)
    if len(parts) != 3 or parts[0] != "":
        return None
    try:
        profile = Profile(parts[1])
    except ValueError:
        return None
    if wildcard and parts[2] == WILDCARD:
        return profile, WILDCARD
    try:
        return profile, validate_login(parts[2])
    except InvalidIdentity:
        return None


class InvalidIdentity(ValueError):
    """The auth API's answer, or a static-key login, does not describe a valid identity."""


class InvalidLogin(InvalidIdentity):
    """The login is not one ``validate_login`` accepts; the refusal is ``invalid-login``."""


MAX_LOGIN_CHARS = 256
# Characters no login may hold (PROTOCOL "login_id", docs/protocol.md): control characters
# (C0, DEL, C1) split STOMP headers and log lines; the Unicode line and paragraph separators
# break lines too; a lone surrogate is not encodable as UTF-8.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def validate_login(value: object) -> str:
    """The one check of every login, wherever it comes from (static keys, the auth API's
    answer, a destination a client names). Raises InvalidLogin (``invalid-login``).

    A login is a concrete, printable name: a non-empty string of at most MAX_LOGIN_CHARS that
    is not only spaces, without ``/`` (it becomes ``/<profile>/<login>``), without the wildcard
    ``*`` (its client room would be a wildcard room), and without control characters, line or
    paragraph separators or lone surrogates (they could split a frame's header).
    """
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LOGIN_CHARS:
        raise InvalidLogin(errors.INVALID_LOGIN)
    if "/" in value or WILDCARD in value or any(
            unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in value):
        raise InvalidLogin(errors.INVALID_LOGIN)
    return str.__str__(value)


@cache
def _watch_rooms(realm: Realm, profile: Profile) -> tuple[Room, ...]:
    """The rooms a profile watches in a realm (``{"client": "*", "profile": p}``): made once."""
    return tuple(client_room(realm, p, WILDCARD) for p in PROFILE_RULES[profile].watches)


@dataclass(frozen=True)
class Identity:
    api_rooms: tuple[Room, ...] = ()
    login_id: str | None = None
    profile: Profile = Profile.AGENT
    publish_rooms: tuple[Room, ...] = ()
    realm: Realm = Realm.API
    # Derived, once (the hub, the codecs and the session read them for every connection,
    # every close and kick): API rooms plus the profile's watch rooms, de-duplicated, API
    # order first; and for a client with a login, its address (``address_of``: the key of
    # everything addressed to it), the destination it is shown and others name it by
    # (``/agent/bob``), and its client room.
    allowed_rooms: tuple[Room, ...] = field(init=False)
    destination: str | None = field(init=False, compare=False, repr=False)
    public_destination: str | None = field(init=False, compare=False, repr=False)
    client_room: Room | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        rule = PROFILE_RULES[self.profile]
        rooms: list[Room] = []
        if rule.can_subscribe:
            for room in (*self.api_rooms, *_watch_rooms(self.realm, self.profile)):
                if room not in rooms:
                    rooms.append(room)
        init = object.__setattr__
        init(self, "allowed_rooms", tuple(rooms))
        login = self.login_id
        init(self, "destination", address_of(self.realm, self.profile, login) if login else None)
        init(self, "public_destination", destination_of(self.profile, login) if login else None)
        init(self, "client_room", client_room(self.realm, self.profile, login) if login else None)

    @property
    def rule(self) -> ProfileRule:
        return PROFILE_RULES[self.profile]

    @property
    def shown_rooms(self) -> list[dict[str, Any]]:
        """The allowed rooms as this client is shown them (``public_room``)."""
        return [public_room(r).original for r in self.allowed_rooms]

    def local_room(self, room: Room) -> Room:
        """A room this client names, read in its realm: a static-key client's
        ``{"client": .., "profile": ..}`` is a client of the static realm."""
        if self.realm != Realm.API and set(room.original) == _CLIENT_KEYS:
            return parse_room({**room.original, REALM_KEY: str(self.realm)})
        return room

    def may_subscribe(self, room: Room) -> bool:
        return permitted(self.allowed_rooms, room)

    def may_publish(self, room: Room) -> bool:
        return self.rule.publish_anywhere or permitted(self.publish_rooms, room)


def _rooms(value: Any, name: str) -> tuple[Room, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidIdentity(f"{name} must be a list of rooms")
    try:
        return tuple(parse_room(r) for r in value)
    except InvalidRoom as exc:
        raise InvalidIdentity(f"{name}: {exc}") from None


def _login(value: Any) -> str | None:
    return None if value is None else validate_login(value)


def identity_from_api(body: Any) -> Identity:
    """Build the identity from an auth API 200 body (PROTOCOL §2.1); other keys are ignored."""
    if not isinstance(body, dict):
        raise InvalidIdentity("auth API body is not a JSON object")
    profile_raw = body.get("profile") or Profile.AGENT.value
    try:
        profile = Profile(profile_raw)
    except ValueError:
        raise InvalidIdentity(f"unknown profile {profile_raw!r}") from None
    return Identity(
        api_rooms=_rooms(body.get("allowed_rooms"), "allowed_rooms"),
        login_id=_login(body.get("login_id")),
        profile=profile,
        publish_rooms=_rooms(body.get("publish_rooms"), "publish_rooms"),
    )


def identity_from_static_keys(
    app_key: str, login_id: str, profile_key: str, *, expected_app_key: str,
    profile_keys: dict[str, str],
) -> Identity:
    """The Communication Broker login (PROTOCOL §2.2). Keys are compared in constant time.

    Raises InvalidIdentity with the contract's exact texts.
    """
    if not expected_app_key or not hmac.compare_digest(
        app_key.encode("utf-8", "surrogatepass"), expected_app_key.encode()
    ):
        raise InvalidIdentity(errors.INVALID_APP_KEY)
    found: Profile | None = None
    # Compare against every key so timing does not reveal which profile matched.
    for name, key in profile_keys.items():
        if hmac.compare_digest(profile_key.encode("utf-8", "surrogatepass"),
                               str(key).encode()) and found is None:
            try:
                found = Profile(name)
            except ValueError:
                continue
    if found is None:
        raise InvalidIdentity(errors.INVALID_PROFILE_KEY)
    return Identity(login_id=validate_login(login_id), profile=found, realm=Realm.STATIC)
