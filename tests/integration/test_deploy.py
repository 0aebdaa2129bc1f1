"""deploy/: the nginx site passes `nginx -t` and streams SSE, the env example names only real
settings."""

import json
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

from broker.conf import Settings
from tests.harness import free_port, wait_for_port
from tests.integration.test_sse import NEWS, stream

ROOT = Path(__file__).resolve().parents[2]


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed: test.sh installs it (apt-get install nginx)")
    return nginx


def nginx_conf(tmp_path: Path, *, upstream: int | None = None,
               listen: tuple[int, int] | None = None) -> Path:
    """The deploy site in a minimal nginx.conf, with a throwaway certificate; ``upstream``:
    the one broker port the upstream names, ``listen``: the (http, https) ports instead of
    80 and 443, on 127.0.0.1."""
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=broker.example.com", "-keyout", str(tls / "privkey.pem"),
         "-out", str(tls / "fullchain.pem")], check=True, capture_output=True)
    site = (ROOT / "deploy/nginx/combroker.conf").read_text().replace("/etc/combroker/tls", str(tls))
    if upstream is not None:
        site, n = re.subn(r"(?m)^    server 127\.0\.0\.1:800\d;\n", "", site)
        assert n == 2, "the upstream block changed: update this test"
        site = site.replace("least_conn;", f"least_conn;\n    server 127.0.0.1:{upstream};")
    if listen is not None:
        site = site.replace("listen 80;", f"listen 127.0.0.1:{listen[0]};")
        site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen[1]} ssl;")
    (tmp_path / "site.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n"
        f" proxy_temp_path {tmp_path};\n"
        f" include {tmp_path}/site.conf;\n}}\n")
    return conf


def test_nginx_site_config_is_valid(tmp_path: Path) -> None:
    result = subprocess.run([nginx_binary(), "-t", "-c", str(nginx_conf(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


async def test_sse_streams_through_the_nginx_site(tmp_path: Path, broker_factory,
                                                  auth_api) -> None:
    """The site passes the SSE stream on as it is written: each event arrives while the
    response goes on (nginx buffering would hold them), heart-beats included."""
    auth_api.allow(token="bob", body={"login_id": "bob", "allowed_rooms": [NEWS]})
    broker = broker_factory(auth_api=auth_api, BROKER_SSE_HEARTBEAT=0.5)
    ports = (free_port(), free_port())
    conf = nginx_conf(tmp_path, upstream=broker.port, listen=ports)
    nginx = subprocess.Popen([nginx_binary(), "-c", str(conf), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(ports[1])
        url = (f"https://127.0.0.1:{ports[1]}/sse/?token=bob&subscribe="
               + urllib.parse.quote(json.dumps([{"requestId": 1, "room": NEWS}])))
        http = httpx.AsyncClient(verify=False, trust_env=False,
                                 timeout=httpx.Timeout(10, read=None))
        async with http, stream(url, client=http) as s:
            assert s.response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert (await s.next()).json()["type"] == "welcome"
            assert (await s.next()).json() == {"code": "success", "requestId": 1}
            assert (await s.next(comments=True)).data is None  # a heart-beat, unbuffered
            r = await broker.atrigger([NEWS], "through nginx")
            assert r.status_code == 202
            assert (await s.next()).json()["data"] == "through nginx"
            # a refusal is nginx's answer as the broker gave it
            refused = await http.get(url.replace("token=bob", "token=eve"))
            assert refused.status_code == 403 and refused.json()["reason"] == "refused"
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_env_example_names_only_known_settings() -> None:
    known = {f.name for f in fields(Settings)}
    text = (ROOT / "deploy/combroker.env.example").read_text()
    names = set(re.findall(r"^#?(BROKER_[A-Z_]+)=", text, flags=re.M))
    assert names, "no settings found"
    assert names <= known, names - known
