"""broker.wsedge under uvicorn's ``--proxy-headers``: a trusted proxy's ``X-Forwarded-For``
names the client, an untrusted peer's is ignored; uvicorn's middleware that does it is made
once per set of trusted hosts, not at every handshake (it parses them when it is made)."""

from broker import wsedge


def scope(peer: str) -> dict:
    return {"type": "websocket", "client": (peer, 5000), "scheme": "ws",
            "headers": [(b"x-forwarded-for", b"203.0.113.7")]}


async def test_a_trusted_proxy_names_the_client_and_the_middleware_is_made_once() -> None:
    wsedge._proxy_headers.clear()
    trusted, untrusted = scope("127.0.0.1"), scope("198.51.100.1")
    await wsedge._proxied(trusted, ["127.0.0.1"])
    await wsedge._proxied(untrusted, ["127.0.0.1"])
    assert trusted["client"][0] == "203.0.113.7"
    assert untrusted["client"][0] == "198.51.100.1"
    assert len(wsedge._proxy_headers) == 1
