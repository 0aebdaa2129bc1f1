"""Resume tokens (PROTOCOL §7): the pure part. Storage is the cluster's, the flow the driver's.

A rich-dialect connection is welcomed with a fresh ``resume_token``. When it closes, the driver
stores the connection's subscriptions (request id, room, and for history rooms the last
offset written to the client) under the token's hash, for BROKER_RESUME_TTL seconds, in Redis
(any process can take it) or the MemoryCluster.

A client that reconnects with ``?resume=<token>`` (WebSocket) or ``"resume": <token>`` (TCP
JSON lines) authenticates as always; the stored state is then taken, once, only when the new
identity's fingerprint equals the stored one. A wrong identity leaves the state in place (a
stolen token is useless without the owner's credentials, and cannot be used to destroy it).

- Tokens are ``secrets.token_urlsafe(24)`` (192 random bits); only their SHA-256 is stored.
- The fingerprint is the client room (realm, profile and login: a static-key bob and the auth
  API's bob are two clients); without a login, the allowed rooms.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

from rooms import InvalidRoom, Room, parse_room

from .identity import Identity

TOKEN_BYTES = 24
MAX_TOKEN_CHARS = 128


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_key(token: str) -> str:
    """What the store is keyed by: the token's SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def plausible(token: object) -> bool:
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS


def fingerprint(identity: Identity) -> str:
    if identity.client_room is not None:
        who: Any = ["client", identity.client_room.key]
    else:
        who = ["rooms", str(identity.profile), sorted(r.key for r in identity.allowed_rooms)]
    return hashlib.sha256(json.dumps(who, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SavedSubscription:
    request_id: Any
    room: Room
    offset: int | None  # history rooms: the last offset written to the client
    presence: bool = False  # the subscription asked for join/leave frames
    filter: Any = None  # its event filter as given (broker.filters), compiled again on restore


def encode_state(subs: list[SavedSubscription]) -> str:
    return json.dumps({"v": 1, "subs": [
        {"rid": s.request_id, "room": s.room.original, "offset": s.offset,
         **({"presence": True} if s.presence else {}),
         **({"filter": s.filter} if s.filter is not None else {})} for s in subs]},
        separators=(",", ":"))


def decode_state(text: str | bytes) -> list[SavedSubscription]:
    """The saved subscriptions; entries that no longer parse are skipped."""
    try:
        raw = json.loads(text)
    except ValueError:
        return []
    out: list[SavedSubscription] = []
    for item in raw.get("subs", []) if isinstance(raw, dict) else []:
        try:
            room = parse_room(item["room"])
        except (InvalidRoom, KeyError, TypeError):
            continue
        offset = item.get("offset")
        out.append(SavedSubscription(item.get("rid"), room,
                                     offset if isinstance(offset, int) else None,
                                     item.get("presence") is True, item.get("filter")))
    return out
