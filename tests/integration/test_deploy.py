"""deploy/: the nginx site passes `nginx -t`, the env example names only real settings."""

import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from broker.conf import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_nginx_site_config_is_valid(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed: test.sh installs it (apt-get install nginx)")
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=broker.example.com", "-keyout", str(tls / "privkey.pem"),
         "-out", str(tls / "fullchain.pem")], check=True, capture_output=True)
    site = (ROOT / "deploy/nginx/combroker.conf").read_text().replace("/etc/combroker/tls", str(tls))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n client_body_temp_path {tmp_path};\n"
        f" include {tmp_path}/site.conf;\n}}\n")
    result = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_env_example_names_only_known_settings() -> None:
    known = {f.name for f in fields(Settings)}
    text = (ROOT / "deploy/combroker.env.example").read_text()
    names = set(re.findall(r"^#?(BROKER_[A-Z_]+)=", text, flags=re.M))
    assert names, "no settings found"
    assert names <= known, names - known
