"""Persistent subscriptions: the pure part. Storage is the cluster's
(``broker.stores.persistent``), the flow the session's and the driver's.

A subscribe with ``"persistent": true`` (STOMP: a ``persistent:true`` SUBSCRIBE header) is kept
for the login that made it, under its address (``Identity.destination``: realm, profile and
login, as the registry keys destinations), by request id. Every later connection of that login,
on any process and any transport, gets it back at the open (after a resume, whose subscription
of the same request id wins): each kept entry becomes the ``Subscribe`` it was
(``request_of``) and goes through the subscribe rule again, so the *new* identity's rooms and
profile decide. The welcome announces what came back (rich dialect ``"persistent"``, STOMP a
``persistent`` CONNECTED header).

What an entry keeps is the request's own fields, named once in ``FIELDS`` (a field a later
subscribe gains, e.g. a filter, is kept by adding its name there), written as the client sent
them (the room as it named it) and never ``since``: a restored subscription is live from the
open, and a history room's entry in the welcome says the room's offset now.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from . import errors
from .jsontext import dump_json, load_json
from .requests import Subscribe

# The Subscribe fields a persistent subscription keeps (their defaults are not written).
FIELDS = ("room", "presence", "filter")
# Characters of one kept entry's JSON (the room, and the other fields): one login's entries
# are at most BROKER_MAX_PERSISTENT_SUBSCRIPTIONS × this, plus their request ids.
MAX_ENTRY_CHARS = 4096

# A restore refused for one of these reasons forgets the entry: the new identity may not
# subscribe to its room (the auth API no longer lists it), or it no longer reads as a subscribe.
# Any other refusal (this connection's own bounds, presence off for the room, a request id a
# resumed subscription holds for another room) may pass later: the entry stays kept.
REFUSED_FOR_GOOD = frozenset({
    errors.ROOM_NOT_FOUND, errors.PROFILE_CANNOT_SUBSCRIBE, errors.INVALID_ROOM,
    errors.INVALID_MESSAGE, errors.NO_REQUEST_ID, errors.REQUEST_ID_TOO_LONG,
    errors.PERSISTENT_NEEDS_LOGIN, errors.PERSISTENT_NOT_ALLOWED, errors.PERSISTENT_TOO_LARGE,
    errors.INVALID_FILTER, errors.FILTER_TOO_LARGE,
})

_DEFAULTS = {f.name: f.default for f in fields(Subscribe) if f.name in FIELDS}


def entry_of(req: Subscribe) -> str:
    """The JSON text kept for ``req`` (an accepted subscribe): its fields but the id."""
    return dump_json({name: getattr(req, name) for name in FIELDS
                      if getattr(req, name) != _DEFAULTS[name]})


def request_of(request_id_json: str, entry: str) -> Subscribe | None:
    """The subscribe a kept entry was (None: it no longer reads as one)."""
    try:
        rid: Any = load_json(request_id_json)
        saved = load_json(entry)
    except ValueError:
        return None
    if not isinstance(saved, dict):
        return None
    return Subscribe(rid, **{name: saved[name] for name in FIELDS if name in saved},
                     persistent=True)
