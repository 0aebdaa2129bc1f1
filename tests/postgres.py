"""A private PostgreSQL server for the tests, in the style of ``tests.harness.RedisServer``.

``PostgresServer``: ``initdb`` + ``postgres`` of Debian's ``postgresql`` package (found under
/usr/lib/postgresql/<version>/bin, the newest first, else on PATH) on a free port of
127.0.0.1, in a temp dir of its own, trusting local connections, persisting nothing worth
keeping (fsync off). PostgreSQL refuses to run as root: as root, the server runs as the
``postgres`` user the package creates (else ``nobody``), which owns the temp dir. Nothing is
fetched at run time; ./test.sh installs the package.

>>> with PostgresServer() as pg:
...     pg.create_database("x")   # then connect with pg.dsn("x") or pg.port
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness import LOCALHOST, _LIVE, _kill_proc, _tail, free_port

SUPERUSER = "postgres"


class PostgresServerError(RuntimeError):
    pass


def postgres_bindir() -> Path:
    """The bin directory of Debian's PostgreSQL (the newest version), else initdb's on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresServerError("PostgreSQL's initdb not found (Debian package postgresql); "
                              "run ./test.sh to install it")


def _run_as() -> str | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresServerError("running as root and neither a postgres nor a nobody user exists")


class PostgresServer:
    def __init__(self, start_timeout: float = 30.0) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="combroker-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.user = _run_as()
        self.proc: subprocess.Popen | None = None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={LOCALHOST} port={self.port} user={SUPERUSER} dbname={dbname}"

    def start(self) -> PostgresServer:
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
             "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            user=self.user, cwd=self.dir, capture_output=True, text=True, timeout=120)
        if initdb.returncode != 0:
            raise PostgresServerError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", LOCALHOST, "-k", str(self.dir), "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                user=self.user, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True)
        _LIVE.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PostgresServerError(f"postgres exited with {self.proc.returncode}:\n"
                                          f"{_tail(self.log_path)}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise PostgresServerError(f"postgres on port {self.port} did not answer within "
                                  f"{self.start_timeout}s ({last}):\n{_tail(self.log_path)}")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def query(self, dbname: str, sql: str, *params: object) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

    def log(self) -> str:
        return _tail(self.log_path, 20000)

    def close(self) -> None:
        if self.proc is not None:
            _kill_proc(self.proc, group=False, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _hard_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
