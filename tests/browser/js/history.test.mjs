// Issue 8 in combroker.js: resume tokens, `since` on re-subscribe, duplicate triggers dropped,
// acknowledged messages. Scripted sockets for the protocol details; the real broker (run by
// tests/browser/test_js_client.py) for a resume end to end.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import WS from "ws";

import { connect } from "../../../broker/static/combroker/combroker.js";

import { FakeWS, WAIT, nextEvent, tick } from "./support.mjs";

const WS_URL = process.env.COMBROKER_WS_URL;
const BASE_URL = process.env.COMBROKER_BASE_URL;
const TRIGGER_TOKEN = process.env.COMBROKER_TRIGGER_TOKEN;
const noBroker = !WS_URL || !BASE_URL || !TRIGGER_TOKEN;
const CHAT1 = { target: "chat", customer: "1" };
FakeWS.welcomed = { allowed_rooms: [CHAT1], connection_id: "c" };
// answer subscribes like the broker does for a history room
FakeWS.answer = (ws, frame) => {
  if (frame.type === "subscribe") {
    ws.serverSend({ code: "success", requestId: frame.requestId, offset: 100 });
  }
};


const options = { WebSocket: FakeWS, minDelay: 1, maxDelay: 5, pingInterval: 0 };

describe("history and resume (scripted broker)", () => {
  test("offsets are tracked, duplicates dropped, and a re-subscribe asks since", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect("ws://fake/ws/", options);
    const got = [];
    const sub = client.subscribe(CHAT1, (data) => got.push(data));
    await sub.ready;
    assert.equal(sub.offset, 100); // where the subscription starts
    const ws = FakeWS.instances[0];
    const deliver = (id, offset, data, room = { customer: "1", target: "chat" }) =>
      ws.serverSend({ type: "publish", requestId: sub.id, data, room, id, offset });
    deliver("a", 101, "one");
    deliver("b", 102, "two");
    deliver("a", 101, "one again"); // the same trigger twice: once only
    assert.deepEqual(got, ["one", "two"]);
    assert.equal(sub.offset, 102);

    // reconnected without resume (the token was not honoured): subscribe again with since
    FakeWS.server = (s) => s.welcome({ resumed: false });
    const reopened = nextEvent(client, "reconnect");
    ws.serverClose(1001);
    await reopened;
    const again = FakeWS.instances[1];
    assert.equal(new URL(again.url).searchParams.get("resume_token"), "rt-1");
    assert.deepEqual(again.sent.filter((f) => f.type === "subscribe"),
      [{ type: "subscribe", room: CHAT1, requestId: sub.id, since: 102 }]);
    client.close();
  });

  test("a resumed welcome: restored subscriptions are not sent again, others are", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect("ws://fake/ws/", options);
    const kept = client.subscribe(CHAT1, () => {});
    const lost = client.subscribe({ target: "news" }, () => {});
    await Promise.all([kept.ready, lost.ready]);
    FakeWS.server = (s) => s.welcome({ resumed: true,
      subscriptions: [{ requestId: kept.id, offset: 100, recovered: true }] });
    const reopened = nextEvent(client, "reconnect");
    FakeWS.instances[0].serverClose(1006);
    const ev = await reopened;
    assert.equal(ev.restored.length, 2);
    assert.deepEqual(FakeWS.instances[1].sent.filter((f) => f.type === "subscribe")
      .map((f) => f.requestId), [lost.id]);
    assert.ok(kept.active && lost.active);
    client.close();
  });

  test("acknowledged messages: send with ack, confirm, the confirmed event", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect("ws://fake/ws/", options);
    const ws = FakeWS.instances[0];
    const sent = client.send("/agent/bob", { n: 1 }, { ack: true });
    await tick();
    const request = ws.sent.at(-1);
    assert.deepEqual({ ...request, requestId: undefined },
      { type: "send", to: "/agent/bob", data: { n: 1 }, ack: true, requestId: undefined });
    ws.serverSend({ code: "success", requestId: request.requestId, id: "m1" });
    assert.equal((await sent).id, "m1");
    const confirmed = nextEvent(client, "confirmed");
    ws.serverSend({ type: "confirmed", id: "m1", to: "/agent/bob" });
    assert.deepEqual(await confirmed, { type: "confirmed", id: "m1", to: "/agent/bob" });
    const confirming = client.confirm("m2");
    await tick();
    const c = ws.sent.at(-1);
    assert.deepEqual([c.type, c.id], ["confirm", "m2"]);
    ws.serverSend({ code: "success", requestId: c.requestId });
    await confirming;
    const plain = client.send("/agent/bob", 1);
    await tick();
    assert.equal("ack" in ws.sent.at(-1), false);
    ws.serverSend({ code: "success", requestId: ws.sent.at(-1).requestId, id: "m3" });
    await plain;
    client.close();
  });
});

describe("resume against the broker", { skip: noBroker && "no broker" }, () => {
  const clients = [];
  after(() => { for (const c of clients) c.close(); });

  test("a dropped connection comes back resumed, subscriptions and all", async () => {
    const client = await connect(WS_URL, { token: "alice", WebSocket: WS, minDelay: 50,
      maxDelay: 200, pingInterval: 0 });
    clients.push(client);
    const token = client.resumeToken;
    assert.equal(typeof token, "string");
    const got = [];
    const sub = client.subscribe({ target: "news" }, (data) => got.push(data));
    await sub.ready;
    const reopened = nextEvent(client, "reconnect");
    client._ws.close(); // the network drops it; the client did not ask to stop
    const ev = await reopened;
    assert.equal(ev.welcome.resumed, true);
    assert.deepEqual(ev.welcome.subscriptions.map((s) => s.requestId), [sub.id]);
    assert.notEqual(client.resumeToken, token);
    const r = await fetch(`${BASE_URL}/trigger`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${TRIGGER_TOKEN}` },
      body: JSON.stringify({ rooms: [{ target: "news" }], data: "after resume" }),
    });
    assert.equal(r.status, 202);
    const t0 = Date.now();
    while (!got.length && Date.now() - t0 < WAIT) await tick(20);
    await tick(200);
    assert.deepEqual(got, ["after resume"]);
  });
});
