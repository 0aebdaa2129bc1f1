"""The Communication Broker dialect's ERROR frames carry ``error-desc`` (issue 11, item 17).

Its JavaScript client (com-broker-1-0.js) reads only ``error-desc`` of an ERROR or ACK frame, as
the original server sets it: without it a wrong application or profile key reached the page as
``onError(undefined)``. Raw frames here, over the ``stomp`` WebSocket subprotocol and the CB
framing of the TCP gate; ``message`` stays (standard STOMP clients read it).
"""

from __future__ import annotations

import pytest

from tests.harness import close_code
from tests.integration.gatehelpers import STATIC_KEYS, CBClient, start_gate
from tests.integration.test_stomp_ws import stomp_ws

pytestmark = pytest.mark.timeout(60)

BAD_KEYS = [("ak", "nope", "Invalid Application Secret Key."),
            ("zz", "app-secret", "Invalid Profile/Passcode.")]


@pytest.mark.parametrize("passcode, app_key, text", BAD_KEYS)
async def test_refusal_over_the_stomp_subprotocol_has_error_desc(broker_factory, auth_api,
                                                                 passcode, app_key, text):
    broker = broker_factory(auth_api=auth_api, **STATIC_KEYS)
    client, err = await stomp_ws(broker.ws_url, "stomp", login="eve", passcode=passcode,
                                 **{"secret-key": app_key})
    assert err.command == "ERROR"
    assert err.headers["error-desc"] == text and err.headers["message"] == text
    assert (await close_code(client.ws))[0] == 4003


async def test_request_error_without_transaction_has_error_desc(broker_factory, auth_api,
                                                                unique):
    broker = broker_factory(auth_api=auth_api, **STATIC_KEYS)
    a, connected = await stomp_ws(broker.ws_url, "stomp", login=f"a{unique}", passcode="ak",
                                  **{"secret-key": "app-secret"})
    assert connected.command == "CONNECTED"
    await a.send("SEND", "x", destination=f"/agent/nobody{unique}")
    err = await a.recv()
    assert err.command == "ERROR"
    assert err.headers["error-desc"] == err.headers["message"] == "destination-not-found"
    await a.send("SEND", "y", destination=f"/agent/nobody{unique}", transaction="t1")
    assert (await a.recv()).headers == {"transaction": "t1", "error-desc": "destination-not-found"}
    await a.ws.close()


@pytest.mark.parametrize("passcode, app_key, text", BAD_KEYS)
def test_refusal_on_the_tcp_gate_has_error_desc(broker_factory, auth_api, passcode, app_key,
                                                text):
    gate = start_gate(broker_factory, auth_api=auth_api, **STATIC_KEYS)
    c = CBClient(gate.port)
    err = c.connect("eve", passcode, app_key)
    assert err.command == "ERROR"
    assert err.headers["error-desc"] == text and err.headers["message"] == text
    assert c.closed()
