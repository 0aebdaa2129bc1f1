"""How the pages are served, without a browser: the monitor console works without BROKER_DEMO."""

from __future__ import annotations

from tests.harness import BrokerProcess


def test_console_and_client_are_served_without_the_demo(broker: BrokerProcess) -> None:
    # the harness's server, not runbroker: BROKER_DEMO is off
    page = broker.get("/admin-console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "combroker monitor" in page.text
    assert 'from "/static/combroker/combroker.js"' in page.text
    js = broker.get("/static/combroker/combroker.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert "export function connect" in js.text
    assert broker.get("/").status_code == 404  # the demo page is demo-only
    assert broker.get("/demo/trigger").status_code == 404
    assert broker.get("/com-broker").status_code == 404


def test_demo_page_under_runbroker(demo_broker: BrokerProcess) -> None:
    page = demo_broker.get("/")
    assert page.status_code == 200
    assert 'from "/static/combroker/combroker.js"' in page.text
    assert demo_broker.get("/admin-console").status_code == 200
    cb = demo_broker.get("/com-broker")
    assert cb.status_code == 200 and "/static/combroker/com-broker-compat.js" in cb.text
