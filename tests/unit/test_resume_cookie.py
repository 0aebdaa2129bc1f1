"""The resume cookie (broker.resumecookie, BROKER_RESUME_COOKIE): its Set-Cookie value, reading
it back from a handshake after ``?resume=``, and keeping it from the auth API."""

from __future__ import annotations

import dataclasses

from broker import resumecookie
from broker.conf import Settings
from broker.handshake import credentials_from_scope, resume_token_from_scope, secure_scope
from broker.wsframing import websocket_framing


def scope(cookie: str | None = None, query: str = "", scheme: str = "ws",
          rich: bool = True) -> dict:
    headers = [(b"cookie", cookie.encode())] if cookie is not None else []
    return {"type": "websocket", "path": "/ws/", "query_string": query.encode(),
            "headers": headers, "scheme": scheme,
            "subprotocols": ["combroker.v1"] if rich else []}


def attributes(value: str) -> dict[str, str]:
    first, *rest = value.split("; ")
    name, _, token = first.partition("=")
    return {"name": name, "value": token,
            **{k: v for k, _, v in (a.partition("=") for a in rest)}}


def test_the_header_is_http_only_with_the_path_and_same_site_and_secure_only_over_tls():
    plain = attributes(resumecookie.header("tok", path="/ws/", secure=False))
    assert plain == {"name": "combroker_resume", "value": "tok", "Path": "/ws/",
                     "HttpOnly": "", "SameSite": "Lax"}
    strict = attributes(resumecookie.header("tok", path="", secure=True, same_site="strict"))
    assert strict["SameSite"] == "Strict" and "Secure" in strict and strict["Path"] == "/"
    assert "Max-Age" not in strict  # the state's lifetime starts at the close, not here
    for odd in ("/ws/;Domain=evil", "/ws/\r\nX: y", "ws", '/a"b', "/café"):
        assert attributes(resumecookie.header("t", path=odd, secure=False))["Path"] == "/"


def test_read_and_without():
    assert resumecookie.read(None) is None and resumecookie.read("sessionid=1") is None
    assert resumecookie.read("a=1; combroker_resume=tok; b=2") == "tok"
    assert resumecookie.read("xcombroker_resume=no; combroker_resume=") is None
    assert resumecookie.without("a=1; combroker_resume=tok; b=2") == "a=1; b=2"
    assert resumecookie.without("combroker_resume=tok") == ""
    assert resumecookie.without("a=1") == "a=1"


def test_the_query_wins_over_the_cookie_which_counts_only_when_on():
    both = scope("combroker_resume=from-cookie", query="resume=from-query")
    assert resume_token_from_scope(both, resume_cookie=True) == "from-query"
    only = scope("sessionid=s; combroker_resume=from-cookie")
    assert resume_token_from_scope(only, resume_cookie=True) == "from-cookie"
    assert resume_token_from_scope(only) is None  # BROKER_RESUME_COOKIE off: not read


def test_the_auth_api_is_not_forwarded_the_resume_cookie():
    creds = credentials_from_scope(scope("sessionid=s; combroker_resume=t"), resume_cookie=True)
    assert creds.headers["cookie"] == "sessionid=s"
    alone = credentials_from_scope(scope("combroker_resume=t"), resume_cookie=True)
    assert "cookie" not in alone.headers
    off = credentials_from_scope(scope("sessionid=s; combroker_resume=t"))
    assert off.headers["cookie"] == "sessionid=s; combroker_resume=t"


def test_the_rich_framing_mints_the_token_its_accept_sets():
    on = dataclasses.replace(Settings(), BROKER_RESUME_COOKIE=True)
    framing, _ = websocket_framing(scope(scheme="wss"), on)
    assert framing.issued_resume_token and framing.set_cookie is not None
    cookie = attributes(framing.set_cookie)
    assert cookie["value"] == framing.issued_resume_token and "Secure" in cookie
    assert secure_scope(scope(scheme="https")) and not secure_scope(scope())
    plain, _ = websocket_framing(scope(rich=False), on)  # only the rich dialect resumes
    assert plain.issued_resume_token is None and plain.set_cookie is None
    off, _ = websocket_framing(scope(), Settings())
    assert off.set_cookie is None
