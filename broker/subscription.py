"""One live subscription, the hub index's item, and what a regex watch's pattern must offer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rooms import Room

from .filters import Filter

class DestinationPattern(Protocol):
    """What the core needs of a regex watch's pattern (STOMP ``destination-type:1``): its
    source text, and whether it fully matches a client destination (truthy) or not. The engine
    is the codec's choice; the hub calls ``fullmatch`` on the event loop, so it must be cheap
    whatever the pattern (broker.codecs.stomp: RE2, linear time, bounded sizes)."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, destination: str) -> object: ...


@dataclass(eq=False, slots=True)
class Subscription:
    """One live subscription. Hashable by identity: it is the hub index's item."""

    request_id: Any
    request_id_json: str
    room: Room
    owner: Any = None  # the driver's connection object; set by the driver
    # Client destinations a regex watch is limited to (STOMP destination-type:1); None = all.
    pattern: DestinationPattern | None = None
    # History rooms: the last offset written to the client (what a resume replays after).
    offset: int | None = None
    # While a replay is being read: live deliveries wait here as (trigger id, offset, frame)
    # and are merged after the replay (broker.history.merge_seam). None = deliver at once.
    buffer: list[tuple[str, int | None, Any]] | None = None
    # After a replay: the highest offset it covered. A live copy of a trigger that was read from
    # the history but reaches this process only after the seam was merged is dropped by it.
    replayed: int | None = None
    # The client asked to be told who joins and leaves the room (broker.presence).
    presence: bool = False
    # Triggers whose tags it does not match are not delivered, live or replayed
    # (broker.filters); None = every trigger.
    filter: Filter | None = None
    # Kept for the login (broker.persistent): an unsubscribe forgets it there too.
    persistent: bool = False

