"""What a client presented to be identified, whatever its transport: a value every layer may
pass (the codecs read it from a connect frame, the transports from a handshake, broker.auth
asks the auth API with it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Credentials:
    """What a client presented, whatever its transport. Header names are lower-case."""

    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    remote_addr: str | None = None
    # Static-key login (Communication Broker): all three or none.
    app_key: str | None = None
    login_id: str | None = None
    profile_key: str | None = None
    # A connection ticket (broker.tickets): verified by the broker itself, not the auth API.
    ticket: str | None = None

    @property
    def is_static(self) -> bool:
        return self.app_key is not None or self.profile_key is not None
