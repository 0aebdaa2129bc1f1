"""The bench's auth API: a real HTTP server answering ``GET /api/bootstrap/`` after a delay.

aiohttp on uvloop, so it is never the bottleneck of a connect storm. It counts the requests
it serves, the most that were in flight at once and the distinct credentials (Authorization,
Cookie) it was asked about (``GET /stats``, ``POST /reset``). With ``BENCH_AUTH_LOGINS=1`` in
its environment each token is a login (``Token bench-7`` is login ``bench-7``), so that a
broker keeps each connection's client room and online presence; otherwise nobody has a login.

    python bench/authapi.py PORT [DELAY_MS]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import uvloop
from aiohttp import web

ROOMS = [{"bench": "*"}, {"user": "*"}]
BODY = json.dumps({"allowed_rooms": ROOMS, "profile": "agent"})
LOGINS = os.environ.get("BENCH_AUTH_LOGINS") == "1"
state = {"count": 0, "in_flight": 0, "max_in_flight": 0}
credentials: set[tuple[str, str]] = set()


def make_app(delay: float) -> web.Application:
    async def bootstrap(request: web.Request) -> web.Response:
        state["count"] += 1
        credentials.add((request.headers.get("Authorization", ""),
                         request.headers.get("Cookie", "")))
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if delay:
                await asyncio.sleep(delay)
            if LOGINS:
                token = request.headers.get("Authorization", "").removeprefix("Token ")
                return web.json_response({"allowed_rooms": ROOMS, "profile": "agent",
                                          "login_id": token or "anonymous"})
            return web.Response(text=BODY, content_type="application/json")
        finally:
            state["in_flight"] -= 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({**state, "distinct_credentials": len(credentials)})

    async def reset(request: web.Request) -> web.Response:
        state.update(count=0, max_in_flight=state["in_flight"])
        credentials.clear()
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/api/bootstrap/", bootstrap)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    delay_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    uvloop.install()
    web.run_app(make_app(delay_ms / 1000), host="127.0.0.1", port=port, print=None,
                access_log=None, backlog=4096)
