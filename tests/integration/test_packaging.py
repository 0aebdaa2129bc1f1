"""The package as a deployment gets it (issue 11, item 20).

The project is built into a wheel (from a copy of the working tree, so the checkout gets no
``build/`` or ``*.egg-info``), installed with no extras into an empty virtualenv, and started
from a directory outside the source tree, so nothing of the checkout can be on ``sys.path``:

- the README's production commands (its "Production" block, read from README.md, not copied
  here): uvicorn with ``--ws broker.wsedge:WebSocketEdge``, and the TCP gate;
- ``runbroker`` through ``django-admin --settings combroker.settings`` (an installed package has
  no manage.py), with its demo pages and the JS client served from the package's files.

Each must serve: a WebSocket (or TCP STOMP) client gets its welcome, ``/healthz`` answers.
Nothing here lists the project's dependencies: pip resolves them from pyproject.toml (through
the configured index and pip's cache), so a dependency missing from ``[project].dependencies``
fails the start. ``test_every_import_is_a_declared_dependency`` checks the same statically for
every module, including those imported late.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port, recv_json, send_json, ws_open
from tests.integration.gatehelpers import RawStomp

# Building and installing (about a minute with pip's cache warm) happens once for the module.
pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

# Not copied into the build tree: VCS, virtualenvs, caches, build output, Node packages.
_NOT_SOURCE = shutil.ignore_patterns(".*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
                                     "node_modules", "test-artifacts")
# Environment that must not reach the installed processes: it could put the checkout (or the
# test's own virtualenv) on their path.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def _packages(wheel: zipfile.ZipFile) -> set[str]:
    return {n.split("/", 1)[0] for n in wheel.namelist()
            if "/" in n and not n.split("/", 1)[0].endswith((".dist-info", ".data"))}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in _LEAKY_ENV and not k.startswith("BROKER_")
            and k != "DJANGO_SETTINGS_MODULE"}


def _run(argv: list[str | Path], cwd: Path, timeout: float = 400) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=_clean_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    return proc.stdout


@dataclass
class Installed:
    wheel: Path
    src: Path      # the copy the wheel was built from
    venv: Path
    rundir: Path   # empty; the cwd of every installed process

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    src, dist, venv, rundir = (work / "src", work / "dist", work / "venv", work / "run")
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    rundir.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src], cwd=work)
    (wheel,) = dist.glob("*.whl")
    _run([sys.executable, "-m", "venv", venv], cwd=work)
    # No extras, nothing preinstalled: only what [project].dependencies pulls in.
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], cwd=rundir)
    return Installed(wheel, src, venv, rundir)


def _readme_production() -> list[list[str]]:
    """The commands of README.md's "Production" code block (continuation lines joined)."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True)
                for line in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if c and c[0] != "export"]


def _production_command(program: str, port: int | str) -> list[str]:
    """The README's command for ``program`` on 127.0.0.1:``port``, without its TLS options."""
    (argv,) = [a for a in _readme_production() if program in a[:3]]
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--certfile", "--keyfile"):
            next(it)
        elif arg == "--host":
            out += [arg, "127.0.0.1"]
            next(it)
        elif arg == "--port":
            out += [arg, str(port)]
            next(it)
        else:
            out.append(arg)
    return out


# --------------------------------------------------------------------------------------------


def test_every_import_is_a_declared_dependency() -> None:
    """Every third-party module that the installed packages import is provided by a distribution
    named in [project].dependencies (not only reachable through another dependency)."""
    declared = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", d).group(0)).lower()
                for d in _project()["dependencies"]}
    found = _project_packages()
    providers = importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for module, files in sorted(_third_party_imports(found).items()):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {files[0]}) is not installed at all"
        # The distribution named after the module when there is one (twisted: Twisted, not
        # daphne, which only adds plugins to its namespace).
        own = {d for d in dists if d == module.replace("_", "-").lower()}
        if not (own or dists) & declared:
            missing[module] = files
    assert not missing, f"imported but not in [project].dependencies: {missing}"


def _project_packages() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()
                  and any(re.fullmatch(pat.replace("*", ".*"), p.name) for pat in patterns))


def _third_party_imports(packages: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top not in sys.stdlib_module_names and top not in packages:
                        found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def test_wheel_holds_every_file_of_its_packages(installed: Installed) -> None:
    """Templates, static files (the demo pages, combroker.js) and py.typed are package data:
    every file of the source tree that lies in a package the wheel ships is in the wheel."""
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        packages = _packages(whl)
    assert set(_project_packages()) <= packages
    missing = sorted(
        rel for pkg in packages for f in (installed.src / pkg).rglob("*")
        if f.is_file() and not f.name.startswith(".") and "__pycache__" not in f.parts
        and (rel := str(f.relative_to(installed.src))) not in names)
    assert not missing, f"not in {installed.wheel.name}: {missing}"


def test_the_installed_package_is_the_one_running(installed: Installed) -> None:
    out = _run([installed.bin("python"), "-c",
                "import sys, broker, combroker, rooms, tcpgate; "
                "print('\\n'.join(m.__file__ for m in (broker, combroker, rooms, tcpgate)))"],
               cwd=installed.rundir)
    site = str(installed.venv)
    assert all(line.startswith(site) for line in out.split()), out


async def test_readme_production_command_serves(installed: Installed, broker_factory, auth_api,
                                                redis_server, unique) -> None:
    """README's uvicorn command (``--ws broker.wsedge:WebSocketEdge``, uvloop, httptools) from
    the venv."""
    argv = _production_command("uvicorn", "{port}")
    assert argv[0] == "uvicorn" and "broker.wsedge:WebSocketEdge" in argv, argv
    news = {"target": "news", "id": unique}
    auth_api.allow(token=unique, body={"allowed_rooms": [news], "login_id": f"u{unique}"})
    server = broker_factory(
        argv=[installed.bin("uvicorn"), *argv[1:]], cwd=installed.rundir, name="uvicorn-wheel",
        start_timeout=60, auth_api=auth_api, redis=redis_server,
        BROKER_KEY_PREFIX=f"pkg-{unique}", DJANGO_SETTINGS_MODULE=None,
        **{k: None for k in _LEAKY_ENV})
    assert Path(os.readlink(f"/proc/{server.pid}/cwd")) == installed.rundir

    health = server.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "redis": True})
    ws, welcome = await ws_open(server.ws_url, token=unique)
    assert welcome == {"is_authorized": True, "allowed_rooms": [news]}
    await send_json(ws, {"type": "subscribe", "room": news, "requestId": 1})
    assert await recv_json(ws) == {"code": "success"}
    assert server.trigger([news], {"from": "wheel"}).status_code == 202
    assert await recv_json(ws) == {"type": "publish", "requestId": 1, "data": {"from": "wheel"}}
    await ws.close()
    console = server.get("/admin-console")  # a page from the package's static files
    assert console.status_code == 200 and "combroker" in console.text


def test_readme_tcp_gate_command_serves(installed: Installed, broker_factory, auth_api,
                                        redis_server, unique) -> None:
    argv = _production_command("runtcpgate", "{port}")
    assert argv[0] == "django-admin", argv
    auth_api.allow(token=unique, body={"allowed_rooms": [], "login_id": f"t{unique}"})
    gate = broker_factory(
        argv=[installed.bin("django-admin"), *argv[1:]], cwd=installed.rundir,
        name="tcpgate-wheel", ready_path=None, start_timeout=60, auth_api=auth_api,
        redis=redis_server, BROKER_KEY_PREFIX=f"pkg-{unique}",
        DJANGO_SETTINGS_MODULE="combroker.settings", **{k: None for k in _LEAKY_ENV})
    gate.wait_for_log("listening on", timeout=30)
    client = RawStomp(gate.port)
    try:
        connected = client.connect(unique)
        assert connected.command == "CONNECTED", connected
        assert connected.headers["destination"] == f"/agent/t{unique}"
    finally:
        client.close()


async def test_runbroker_from_the_installed_package(installed: Installed, broker_factory) -> None:
    """``django-admin runbroker --settings combroker.settings``: no manage.py, no checkout."""
    server = broker_factory(
        argv=[installed.bin("django-admin"), "runbroker", "--settings", "combroker.settings",
              "--port", "{port}", "--tcp-port", str(free_port())],
        cwd=installed.rundir, name="runbroker-wheel", start_timeout=60,
        BROKER_TRIGGER_TOKEN=None, DJANGO_SETTINGS_MODULE=None, **{k: None for k in _LEAKY_ENV})
    health = server.get("/healthz")
    assert health.status_code == 200, health.text
    ws, welcome = await ws_open(server.ws_url, token="alice")
    assert welcome["is_authorized"] is True
    await ws.close()
    for path, marker in (("/", "<title>combroker demo</title>"),
                         ("/com-broker", "COM_BROKER_Client"),
                         ("/static/combroker/combroker.js", "export"),
                         ("/static/combroker/com-broker-compat.js", "COM_BROKER_Client")):
        page = server.get(path)
        assert page.status_code == 200 and marker in page.text, (path, page.status_code)
