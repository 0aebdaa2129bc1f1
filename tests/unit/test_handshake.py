"""broker.handshake: what a WebSocket handshake's ASGI scope says about its client."""

from __future__ import annotations

from typing import Any

from broker.handshake import (
    credentials_from_scope, origin_allowed_by, resume_token_from_scope,
)


def scope(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
          ) -> dict[str, Any]:
    return {"query_string": query, "headers": headers or [], "client": ("10.0.0.7", 5123)}


def test_credentials_headers_query_and_address() -> None:
    creds = credentials_from_scope(scope(
        b"token=t1&app_key=k&login_id=bob&profile_key=p&token=t2",
        [(b"Cookie", b"a=1"), (b"cookie", "b=caf\u00e9".encode()), (b"X-Other", b"\xff")]))
    assert creds.token == "t1"
    assert (creds.app_key, creds.login_id, creds.profile_key) == ("k", "bob", "p")
    assert creds.remote_addr == "10.0.0.7"
    assert creds.headers["cookie"] == "a=1; b=caf\u00e9"  # HTTP/2 split cookies joined
    assert creds.headers["x-other"].encode("utf-8", "surrogateescape") == b"\xff"


def test_credentials_of_an_empty_handshake() -> None:
    creds = credentials_from_scope({})
    assert creds.headers == {} and creds.token is None and creds.remote_addr is None


def test_resume_token() -> None:
    assert resume_token_from_scope(scope(b"resume=abc")) == "abc"
    assert resume_token_from_scope(scope(b"resume_token=def")) == "def"
    assert resume_token_from_scope(scope(b"token=t")) is None


def test_origin() -> None:
    allowed = ("https://app.example.com",)
    assert origin_allowed_by(scope(headers=[(b"Origin", b"https://app.example.com")]), allowed)
    assert not origin_allowed_by(scope(headers=[(b"origin", b"https://evil.example")]), allowed)
    assert origin_allowed_by(scope(), allowed)  # no Origin: not a browser
    assert origin_allowed_by(scope(headers=[(b"origin", b"https://evil.example")]), ())
