"""Sessions for plain function-call tests: a recording queue and end, a clock moved by hand."""

from __future__ import annotations

from typing import Any

from broker.disconnect import Disconnect
from broker.identity import Identity
from broker.session import Session, SessionSettings


class Recorder:
    """The session's Queue (the outbox) and its ``end``: every frame, mark and end, in order."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.marks: list[Any] = []
        self.ended: list[Disconnect] = []
        self.queued_bytes = 0

    def push(self, frame: Any, mark: Any = None) -> bool:
        self.frames.append(frame)
        if mark is not None:
            self.marks.append(mark)
        return True

    def end(self, why: Disconnect) -> None:
        self.ended.append(why)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session(codec: Any = None, clock: Clock | None = None, **settings: Any
            ) -> tuple[Session, Recorder]:
    """A new session (state CONNECTING) with its recorder."""
    out = Recorder()
    s = Session(SessionSettings(**settings), codec, out, end=out.end, clock=clock or Clock(),
                name="test")
    return s, out


def opened(identity: Identity, codec: Any, clock: Clock | None = None, **settings: Any
           ) -> tuple[Session, Recorder]:
    """A session authenticated as ``identity`` and welcomed (state OPEN)."""
    s, out = session(codec, clock, **settings)
    s.authenticating()
    s.open(identity)
    s.welcome("c1")
    return s, out


def rules(identity: Identity, **settings: Any) -> Session:
    """A session for tests of its request rules (``Session.handle``) only."""
    s, _ = session(**settings)
    s.identity = identity
    return s
