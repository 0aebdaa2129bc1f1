"""Shared pytest fixtures: thin wrappers over tests/harness.py.

Django is NOT configured here (pytest-django reads DJANGO_SETTINGS_MODULE from pyproject
for unit tests that want it). Integration tests talk to subprocesses only.

Fixtures
--------
redis_server    session  one private RedisServer for the whole run (flush or use unique rooms)
fresh_redis     function its own RedisServer, free to stop/restart/freeze
auth_api        function an AuthAPI stub (GET /api/bootstrap/)
broker_factory  function ``broker_factory(*, auth_api=None, redis=None, port=None, **env)``
                         -> BrokerProcess; every broker is stopped at teardown
broker          function one in-memory broker wired to ``auth_api`` (under uvicorn)
artifacts_dir   function test-artifacts/<test name>/ (emptied at the start of the test)
unique          function a short unique string, for room names / login ids

On failure, each broker's output tail is added to the test report and the full logs are
written to the test's artifacts dir.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness import ARTIFACTS_ROOT, AuthAPI, BrokerProcess, RedisServer

TRIGGER_TOKEN = "test-token"

_BROKERS = pytest.StashKey[list]()
_REPORTS = pytest.StashKey[dict]()


def _artifact_dir_for(node: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9._\-\[\]]+", "_", node.name)[:150]
    return ARTIFACTS_ROOT / name


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed:
        for b in item.stash.get(_BROKERS, []):
            report.sections.append(
                (f"{b.name} on port {b.port} (pid {b.pid}) output tail", b.log_tail(6000))
            )
    return report


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session (not the machine's 6379)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: stop(), restart(), freeze() as you like."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------------------
# Auth API stub
# ---------------------------------------------------------------------------


@pytest.fixture
def auth_api() -> Iterator[AuthAPI]:
    api = AuthAPI()
    try:
        yield api
    finally:
        api.stop()


# ---------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------


class BrokerFactory:
    """Callable that starts brokers and remembers them for teardown.

    ``broker_factory(auth_api=api, redis=redis_server, BROKER_AUTH_TIMEOUT=1)``

    - ``auth_api``: an AuthAPI (sets BROKER_AUTH_URL to its url) or a URL string.
    - ``redis``: a RedisServer, a URL string, or a list of either (comma-joined, sharding).
      None (default): BROKER_REDIS_URL unset -> in-memory channel layer.
    - ``port``: a fixed port (default: a free one). ``start=False`` returns it unstarted.
    - ``server`` (``"uvicorn"``, the default, or ``"daphne"``) / ``argv`` / ``start_timeout``
      / ``ready_path`` / ``name`` / ``cwd``: passed to BrokerProcess.
    - any other keyword is an env var (``None`` removes it). BROKER_TRIGGER_TOKEN defaults
      to ``"test-token"`` (``broker_factory.trigger_token``).
    """

    trigger_token = TRIGGER_TOKEN

    def __init__(self, node: pytest.Item) -> None:
        self.node = node
        self.brokers: list[BrokerProcess] = []
        node.stash[_BROKERS] = self.brokers

    def __call__(self, *, auth_api: AuthAPI | str | None = None,
                 redis: RedisServer | str | list | None = None, port: int | None = None,
                 start: bool = True, **kw: Any) -> BrokerProcess:
        proc_kw = {k: kw.pop(k) for k in ("server", "argv", "start_timeout", "ready_path", "name",
                                          "cwd") if k in kw}
        env: dict[str, Any] = {"BROKER_TRIGGER_TOKEN": self.trigger_token}
        if auth_api is not None:
            env["BROKER_AUTH_URL"] = auth_api.url if isinstance(auth_api, AuthAPI) else auth_api
        if redis is not None:
            items = redis if isinstance(redis, (list, tuple)) else [redis]
            env["BROKER_REDIS_URL"] = ",".join(
                r.url if isinstance(r, RedisServer) else str(r) for r in items)
        env.update(kw)
        proc_kw.setdefault("name", f"broker{len(self.brokers) + 1}")
        broker = BrokerProcess(env, port=port, start=False, **proc_kw)
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def stop_all(self) -> None:
        for b in self.brokers:
            try:
                b.stop(timeout=5)
            except Exception:  # pragma: no cover - teardown must go on
                b.kill()


@pytest.fixture
def broker_factory(request: pytest.FixtureRequest) -> Iterator[BrokerFactory]:
    factory = BrokerFactory(request.node)
    try:
        yield factory
    finally:
        factory.stop_all()
        if _failed(request.node) and factory.brokers:
            out = _artifact_dir_for(request.node)
            out.mkdir(parents=True, exist_ok=True)
            for b in factory.brokers:
                (out / f"{b.name}-{b.port}.log").write_text(b.log())


@pytest.fixture
def broker(broker_factory: BrokerFactory, auth_api: AuthAPI) -> BrokerProcess:
    """One broker, in-memory channel layer, authenticating against ``auth_api``."""
    return broker_factory(auth_api=auth_api)


# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """test-artifacts/<test name>/, emptied at the start of the test."""
    path = _artifact_dir_for(request.node)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def trigger_token() -> str:
    return TRIGGER_TOKEN
