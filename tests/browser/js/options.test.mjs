// Issue 15's client options in combroker.js: a connection ticket fetched fresh at every
// connect (WebSocket and SSE), a subscription's `filter` and `persistent` (sent with each
// subscribe, adopted only by a subscribe with the same filter), and a publish's `tags`.
// Scripted sockets; filters against real triggers are tests/browser/test_js_client.py's run of
// client.test.mjs and tests/integration/test_filters.py.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { connect } from "../../../broker/static/combroker/combroker.js";

import { FakeEventSource, FakeWS, tick, waitFor } from "./support.mjs";

const CHAT1 = { target: "chat", customer: "1" };
const PAID = { and: [{ eq: ["status", "paid"] }, { gt: ["amount", 100] }] };
FakeWS.welcomed = { allowed_rooms: [CHAT1], resume_ttl: 60 };
FakeWS.answer = (ws, frame) => {
  if (["subscribe", "unsubscribe", "publish"].includes(frame.type)) {
    ws.serverSend({ code: "success", requestId: frame.requestId });
  }
};
const base = { WebSocket: FakeWS, minDelay: 1, maxDelay: 5, pingInterval: 0,
  resumeStorage: null };

describe("issue 15 options", () => {
  test("a ticket function is called at every connect, and each URL carries its own ticket",
    async () => {
      FakeWS.instances = [];
      FakeWS.server = (s) => s.welcome();
      let n = 0;
      const client = await connect("ws://fake/ws/", { ...base, ticket: async () => `tk-${++n}` });
      FakeWS.instances[0].serverClose(1006);
      await waitFor(() => client.state === "open" && FakeWS.instances.length === 2, "reconnect");
      const tickets = FakeWS.instances.map((ws) => new URL(ws.url).searchParams.get("ticket"));
      assert.deepEqual(tickets, ["tk-1", "tk-2"]);
      client.close();
    });

  test("over SSE every stream, a reopen included, gets a fresh ticket", async () => {
    FakeEventSource.instances = [];
    FakeEventSource.server = (es) => { es.welcome(); es.answer(); };
    let n = 0;
    const client = await connect("ws://fake/ws/", { ...base, transport: "sse",
      EventSource: FakeEventSource, ticket: () => `tk-${++n}` });
    const sub = client.subscribe(CHAT1, () => {}, { filter: PAID });
    await sub.ready;
    const tickets = FakeEventSource.instances.map((es) => es.query.get("ticket"));
    assert.deepEqual(tickets, ["tk-1", "tk-2"]);
    assert.deepEqual(FakeEventSource.instances[1].items[0].filter, PAID);
    client.close();
  });

  test("filter and persistent go with the subscribe, and again with a re-subscribe", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect("ws://fake/ws/", base);
    const sub = client.subscribe(CHAT1, () => {}, { filter: PAID, persistent: true });
    await sub.ready;
    const sent = FakeWS.instances[0].last("subscribe");
    assert.deepEqual([sent.filter, sent.persistent], [PAID, true]);
    assert.deepEqual([sub.filter, sub.persistent], [PAID, true]);
    FakeWS.instances[0].serverClose(1006); // not resumed: made again, with both
    await waitFor(() => FakeWS.instances.length === 2
      && FakeWS.instances[1].last("subscribe"), "re-subscribe");
    const again = FakeWS.instances[1].last("subscribe");
    assert.deepEqual([again.requestId, again.filter, again.persistent], [sub.id, PAID, true]);
    const plain = client.subscribe({ target: "news" }, () => {});
    await plain.ready;
    const bare = FakeWS.instances[1].last("subscribe");
    assert.ok(!("filter" in bare) && !("persistent" in bare), JSON.stringify(bare));
    client.close();
  });

  test("a held subscription is adopted only by a subscribe with the same filter", async () => {
    FakeWS.instances = [];
    // the filter as the broker gives it back: an equal value, not the same object
    FakeWS.server = (s) => s.welcome({ persistent: [
      { requestId: "p1", room: CHAT1, filter: JSON.parse(JSON.stringify(PAID)) }] });
    const client = await connect("ws://fake/ws/", { ...base, adoptTimeout: 5000 });
    const other = client.subscribe(CHAT1, () => {}, { filter: { eq: ["status", "void"] } });
    assert.notEqual(other.id, "p1");
    const unfiltered = client.subscribe(CHAT1, () => {});
    assert.notEqual(unfiltered.id, "p1");
    const same = client.subscribe(CHAT1, () => {}, { filter: PAID });
    assert.equal(same.id, "p1");
    await same.ready;
    await tick();
    assert.equal(FakeWS.instances[0].sent.filter((f) => f.requestId === "p1").length, 0);
    client.close();
  });

  test("publish sends its tags", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect("ws://fake/ws/", base);
    await client.publish(CHAT1, { id: 41 }, { tags: { status: "paid", amount: 120 } });
    assert.deepEqual(FakeWS.instances[0].last("publish").tags, { status: "paid", amount: 120 });
    client.close();
  });
});
