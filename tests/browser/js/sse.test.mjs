// combroker.js over SSE (issue 15), with scripted stand-ins for WebSocket and EventSource: the
// fallback when the WebSocket fails to open, the reopen of the stream on subscribe/unsubscribe
// (overlap read once), the requests SSE cannot carry, and the stream's `event: close`.
// The Chromium test against the real /sse/ is tests/browser/test_sse_fallback.py.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  CombrokerClient, CombrokerError, connect, createClient, sseUrl,
} from "../../../broker/static/combroker/combroker.js";

import { FakeEventSource, FakeWS, nextEvent, tick, waitFor } from "./support.mjs";

const NEWS = { target: "news" };
const CHAT1 = { target: "chat", customer: "1" };
const FAST = { pingInterval: 0, minDelay: 1, maxDelay: 5 };
// What the server answers the client's fetch of a refused stream's URL (its status and body);
// null: unreachable.
let httpAnswer = null;
async function fakeFetch() {
  if (httpAnswer === null) throw new TypeError("fetch failed");
  return new Response(JSON.stringify(httpAnswer.body), { status: httpAnswer.status });
}
const FAKES = { WebSocket: FakeWS, EventSource: FakeEventSource, fetch: fakeFetch, ...FAST };

const streams = () => FakeEventSource.instances;
const lastStream = () => streams()[streams().length - 1];

// A broker whose streams welcome and answer their subscriptions.
const answering = (es) => { es.welcome(); es.answer(); };

// A client on SSE only, its streams served by `server`.
function sseClient(server = answering, options = {}) {
  FakeEventSource.instances = [];
  FakeEventSource.server = server;
  return connect("ws://fake/ws/", { ...FAKES, transport: "sse", ...options });
}

// A path that blocks WebSockets (each fails to open) and a broker whose streams welcome and
// answer their subscriptions.
function blockedWebSocket() {
  FakeWS.instances = [];
  FakeEventSource.instances = [];
  FakeWS.server = (s) => s.serverClose(1006, "");
  FakeEventSource.server = answering;
}

describe("choosing the transport", () => {
  test("a WebSocket that fails to open: the same attempt goes on over SSE", async () => {
    blockedWebSocket();
    const client = new CombrokerClient("ws://fake/ws/?x=1", { ...FAKES, token: "tok" });
    const transports = [];
    const closes = [];
    client.on("transport", (ev) => transports.push([ev.previous, ev.transport, ev.reason]));
    client.on("close", (ev) => closes.push(ev));
    client.on("reconnecting", (ev) => closes.push(ev));
    await client.open();
    assert.equal(client.transport, "sse");
    assert.deepEqual(transports, [[null, "websocket", "default"], ["websocket", "sse", "websocket-failed"]]);
    assert.deepEqual(closes, []); // one attempt: no close, no backoff
    assert.equal(client.attempt, 0);
    assert.equal(FakeWS.instances.length, 1);
    assert.equal(streams().length, 1);
    const es = streams()[0];
    const u = new URL(es.url);
    assert.equal(`${u.origin}${u.pathname}`, "http://fake/sse/");
    assert.equal(u.searchParams.get("token"), "tok");
    assert.equal(u.searchParams.get("x"), "1");
    assert.equal(u.searchParams.get("subscribe"), "[]");
    assert.equal(u.searchParams.has("lastEventId"), false);
    assert.equal(es.withCredentials, false); // the token is the credential
    assert.equal(client.connectionId, "s1");
    client.close();
    assert.equal(es.closed, true);
    assert.equal(client.state, "closed");
  });

  test("the SSE URL: the WebSocket's host and query, or options.sseUrl; cookies go without a token", async () => {
    assert.equal(sseUrl("wss://h:8443/ws/?token=t"), "https://h:8443/sse/?token=t");
    assert.equal(sseUrl("ws://h/ws/", { a: 1, b: undefined }, "http://o/events/"), "http://o/events/?a=1");
    const client = await sseClient((es) => es.welcome(),
      { sseUrl: "https://other/stream/", params: { p: "q" } });
    const es = streams()[0];
    assert.equal(new URL(es.url).origin + new URL(es.url).pathname, "https://other/stream/");
    assert.equal(es.query.get("p"), "q");
    assert.equal(es.withCredentials, true); // no token: the cookie is the credential
    client.close();
  });

  test("no fallback with transport 'websocket', nor when the WebSocket opened", async () => {
    blockedWebSocket();
    const client = new CombrokerClient("ws://fake/ws/", { ...FAKES, transport: "websocket", maxAttempts: 2 });
    const err = await client.open().then(() => null, (e) => e);
    assert.equal(err.code, "reconnect-failed");
    assert.equal(FakeWS.instances.length, 3);
    assert.equal(streams().length, 0);
    assert.equal(client.transport, "websocket");

    // opened, then refused before the welcome: a refusal, not a blocked path
    FakeWS.server = (s) => {
      s.accept();
      s.serverSend({ type: "refused", reason: "refused" });
      s.serverClose(4003, "");
    };
    const refused = await connect("ws://fake/ws/", FAKES).then(() => null, (e) => e);
    assert.equal(refused.code, "refused");
    assert.equal(streams().length, 0);

    // forced SSE never tries the WebSocket
    FakeWS.instances = [];
    const sse = await connect("ws://fake/ws/", { ...FAKES, transport: "sse" });
    assert.equal(sse.transport, "sse");
    assert.equal(FakeWS.instances.length, 0);
    sse.close();
    assert.throws(() => new CombrokerClient("ws://fake/ws/", { ...FAKES, transport: "sse", EventSource: null }),
      (e) => e.code === "no-eventsource");
    assert.throws(() => new CombrokerClient("ws://fake/ws/", { ...FAKES, transport: "carrier-pigeon" }),
      (e) => e.code === "invalid-transport");
  });

  test("once SSE worked where the WebSocket never did, reconnects stay on SSE, from the last event id", async () => {
    blockedWebSocket();
    const client = await connect("ws://fake/ws/", FAKES);
    const es1 = streams()[0];
    es1.send({ type: "broadcast", data: 1, id: "b1" }, "pos-1");
    const reopened = nextEvent(client, "reconnect");
    es1.drop(); // a network error: the client reopens itself, not EventSource
    const ev = await reopened;
    assert.equal(ev.welcome.connection_id, "s2");
    assert.equal(es1.closed, true);
    assert.equal(FakeWS.instances.length, 1); // not tried again
    assert.equal(streams()[1].query.get("lastEventId"), "pos-1");
    assert.equal(client.transport, "sse");
    // known to be SSE while reconnecting: refused at once, not queued
    FakeEventSource.server = () => {};
    streams()[1].drop();
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    const err = await client.send("/agent/b", 1).then(() => null, (e) => e);
    assert.equal(err.code, "unsupported-transport");
    client.close();
  });

  test("a client whose WebSocket worked goes back to it after an SSE connection ends", async () => {
    FakeWS.instances = [];
    FakeEventSource.instances = [];
    FakeWS.server = (s) => s.welcome();
    FakeEventSource.server = answering;
    const client = await connect("ws://fake/ws/", FAKES);
    assert.equal(client.transport, "websocket");
    FakeWS.server = (s) => s.serverClose(1006, "");
    FakeWS.instances[0].serverClose(1001, "");
    await waitFor(() => client.isOpen && client.transport === "sse", "open over SSE");
    FakeWS.server = (s) => s.welcome();
    lastStream().serverClose(1001, "going-away");
    await waitFor(() => client.isOpen && client.transport === "websocket", "back on the WebSocket");
    assert.equal(streams().length, 1);
    client.close();
  });
});

describe("subscriptions over SSE", () => {
  test("subscribe and unsubscribe reopen the stream; the overlap is read once", async () => {
    let hold = false; // the next stream's replies wait for the test
    const client = await sseClient((es) => { es.welcome(); if (!hold) es.answer(); });
    const got = [];
    const publishes = [];
    client.on("publish", (f) => publishes.push(f.id));
    const a = client.subscribe(NEWS, (d) => got.push(["a", d]));
    await a.ready;
    const [es1, es2] = streams();
    assert.equal(streams().length, 2);
    assert.equal(es1.closed, true);
    assert.deepEqual(es2.items, [{ room: NEWS, requestId: a.id }]);
    es2.send({ type: "publish", requestId: a.id, room: NEWS, data: 1, id: "t1" }, "p1");

    // two subscriptions in one batch: one reopen, with the last event id
    hold = true;
    const b = client.subscribe(CHAT1, (d) => got.push(["b", d]));
    const c = client.subscribe({ target: "other" }, () => {});
    await waitFor(() => streams().length === 3, "the reopened stream");
    const es3 = streams()[2];
    assert.deepEqual(es3.items.map((i) => i.requestId), [a.id, b.id, c.id]);
    assert.equal(es3.query.get("lastEventId"), "p1");

    // the overlap: the old stream still delivers, the new one replays; each read once
    es2.send({ type: "publish", requestId: a.id, room: NEWS, data: 2, id: "t2" }, "p2");
    es3.send({ type: "publish", requestId: a.id, room: NEWS, data: 1, id: "t1" }, "q1");
    es3.send({ type: "publish", requestId: a.id, room: NEWS, data: 2, id: "t2" }, "q2");
    assert.equal(es2.closed, false);
    assert.equal(b.active, false);
    es3.answer(); // the subscribe promises settle with the new stream's replies
    assert.equal(await b.ready, b);
    await c.ready;
    assert.equal(es2.closed, true);
    assert.equal(streams().length, 3);
    es3.send({ type: "publish", requestId: b.id, room: CHAT1, data: 3, id: "t3" }, "q3");
    assert.deepEqual(got, [["a", 1], ["a", 2], ["b", 3]]);
    assert.deepEqual(publishes, ["t1", "t2", "t3"]);
    assert.equal(client.connectionId, "s3");

    // unsubscribe: resolves once a stream without the subscription is current
    let done = false;
    const gone = a.unsubscribe().then(() => { done = true; });
    await waitFor(() => streams().length === 4, "the stream without a");
    const es4 = streams()[3];
    assert.deepEqual(es4.items.map((i) => i.requestId), [b.id, c.id]);
    assert.equal(es4.query.get("lastEventId"), "q3");
    await tick(20);
    assert.equal(done, false);
    es4.answer();
    await gone;
    assert.equal(es3.closed, true);
    assert.deepEqual(client.subscriptions.map((s) => s.id), [b.id, c.id]);
    client.close();
  });

  test("a change during a reopen waits for it, then reopens once more", async () => {
    const client = await sseClient((es) => { es.welcome(); if (streams().length !== 2) es.answer(); });
    const a = client.subscribe(NEWS, () => {});
    await waitFor(() => streams().length === 2, "the first reopen");
    const b = client.subscribe(CHAT1, () => {});
    await tick(20);
    assert.equal(streams().length, 2); // waits for the reopen under way
    streams()[1].answer();
    await a.ready;
    await b.ready;
    assert.equal(streams().length, 3);
    assert.deepEqual(streams()[2].items.map((i) => i.requestId), [a.id, b.id]);
    assert.deepEqual(streams().map((es) => es.closed), [true, true, false]);
    client.close();
  });

  test("a reopened stream's refusal of a held subscription ends it", async () => {
    const client = await sseClient((es) => {
      es.welcome();
      for (const item of es.items) {
        es.send(streams().length === 3 && item.room.target === "news"
          ? { type: "error", code: "error", message: "room-not-found", requestId: item.requestId }
          : { code: "success", requestId: item.requestId });
      }
    });
    const a = client.subscribe(NEWS, () => {});
    await a.ready;
    const errors = [];
    client.on("error", (e) => errors.push(e));
    const b = client.subscribe(CHAT1, () => {});
    await b.ready;
    await waitFor(() => a.closed, "a ended");
    assert.equal(errors[0].code, "room-not-found");
    assert.equal(errors[0].subscription, a);
    assert.deepEqual(client.subscriptions, [b]);
    client.close();
  });

  test("the dedupe memory is bounded", async () => {
    const client = await sseClient();
    const sub = client.subscribe(NEWS, () => {});
    await sub.ready;
    let read = 0;
    client.on("publish", () => { read += 1; });
    const es = lastStream();
    const deliver = (i) => es.send({ type: "publish", requestId: sub.id, room: NEWS, data: i, id: `t${i}` });
    for (let i = 0; i <= 5000; i++) deliver(i);
    deliver(5000); // remembered: dropped
    deliver(0); // the oldest, forgotten: read again
    assert.equal(read, 5002);
    assert.ok(client._sse.seen.size <= 5000);
    client.close();
  });
});

describe("requests SSE cannot carry", () => {
  test("reject at once with unsupported-transport; a presence snapshot says so too", async () => {
    const client = await sseClient();
    const calls = [client.send("/agent/b", 1), client.publish(NEWS, 1), client.history(NEWS),
      client.presence(NEWS), client.presenceStats(NEWS), client.admin("stats"), client.status(),
      client.confirm("m1"), client.ping()];
    // settled before any timer runs
    const results = await Promise.race([Promise.allSettled(calls), tick(0).then(() => null)]);
    assert.ok(results, "not rejected at once");
    for (const r of results) {
      assert.equal(r.status, "rejected");
      assert.ok(r.reason instanceof CombrokerError);
      assert.equal(r.reason.code, "unsupported-transport");
    }
    assert.deepEqual(results.map((r) => r.reason.request.type),
      ["send", "publish", "history", "presence", "presence_stats", "admin", "status", "confirm", "ping"]);
    assert.equal(client._pending.size, 0);
    assert.equal(streams().length, 1);

    const errors = [];
    client.on("error", (e) => errors.push(e));
    const sub = client.subscribe(NEWS, () => {}, { presence: true });
    await sub.ready;
    assert.equal(streams()[1].items[0].presence, true); // join/leave frames still come
    await waitFor(() => errors.length === 1, "the snapshot's refusal");
    assert.equal(errors[0].code, "unsupported-transport");
    assert.equal(errors[0].subscription, sub);
    client.close();
  });

  test("a request queued before the transport was known rejects when SSE opens", async () => {
    blockedWebSocket();
    const client = createClient("ws://fake/ws/", FAKES);
    const sent = client.send("/agent/b", 1);
    client.open();
    const err = await sent.then(() => null, (e) => e);
    assert.equal(err.code, "unsupported-transport");
    assert.equal(client.transport, "sse");
    assert.equal(client._pending.size, 0);
    client.close();
  });
});

describe("the end of a stream", () => {
  test("event: close is a close with its code: 4008 reconnects from the last event id, 4010 is final", async () => {
    const client = await sseClient();
    const sub = client.subscribe(NEWS, () => {});
    await sub.ready;
    lastStream().send({ type: "publish", requestId: sub.id, room: NEWS, data: 1, id: "t1" }, "p9");
    let closed = nextEvent(client, "close");
    const reopened = nextEvent(client, "reconnect");
    const slow = lastStream();
    slow.serverClose(4008, "slow");
    let ev = await closed;
    assert.deepEqual([ev.code, ev.reason, ev.willReconnect], [4008, "slow", true]);
    assert.equal(slow.closed, true);
    const r = await reopened;
    assert.deepEqual(r.restored.map((s) => s.id), [sub.id]);
    assert.deepEqual(lastStream().items.map((i) => i.requestId), [sub.id]);
    assert.equal(lastStream().query.get("lastEventId"), "p9");

    closed = nextEvent(client, "close");
    const n = streams().length;
    lastStream().serverClose(4010, "kicked");
    ev = await closed;
    assert.deepEqual([ev.code, ev.reason, ev.willReconnect], [4010, "kicked", false]);
    await tick(30);
    assert.equal(client.state, "closed");
    assert.equal(streams().length, n);
  });

  test("a refused login (HTTP 403) is final, as over WebSocket; a 503 is retried with backoff", async () => {
    httpAnswer = { status: 403, body: { type: "refused", is_authorized: false, reason: "invalid-credentials" } };
    // EventSource does not say which status
    const err = await sseClient((es) => es.fail()).then(() => null, (e) => e);
    assert.equal(err.code, "invalid-credentials");
    assert.equal(err.closeCode, 4003);
    await tick(20);
    assert.equal(streams().length, 1);

    httpAnswer = { status: 400, body: { type: "error", code: "error", message: "too-many-subscriptions" } };
    const errors = [];
    const client400 = createClient("ws://fake/ws/", { ...FAKES, transport: "sse" });
    client400.on("error", (e) => errors.push(e.code));
    const err400 = await client400.open().then(() => null, (e) => e);
    assert.equal(err400.reason, "too-many-subscriptions");
    assert.deepEqual(errors, ["too-many-subscriptions"]);

    FakeEventSource.instances = [];
    httpAnswer = { status: 503, body: { type: "refused", is_authorized: false, reason: "auth-unavailable" } };
    const client = new CombrokerClient("ws://fake/ws/", { ...FAKES, transport: "sse", maxAttempts: 2 });
    const reasons = [];
    client.on("close", (ev) => reasons.push([ev.code, ev.reason, ev.willReconnect]));
    const failed = await client.open().then(() => null, (e) => e);
    assert.equal(failed.code, "reconnect-failed");
    assert.deepEqual(reasons, Array(3).fill([1006, "auth-unavailable", true]));
    assert.equal(streams().length, 3);
    assert.ok(streams().every((es) => es.closed));

    // the status cannot be read, or the login's previous stream is not gone yet: retried
    for (const [answer, reason] of [[null, "sse-refused"], [{ status: 403,
      body: { type: "refused", is_authorized: false, reason: "duplicate-login" } }, "duplicate-login"]]) {
      httpAnswer = answer;
      FakeEventSource.instances = [];
      const retried = new CombrokerClient("ws://fake/ws/", { ...FAKES, transport: "sse", maxAttempts: 1 });
      const why = [];
      retried.on("close", (ev) => why.push(ev.reason));
      assert.equal((await retried.open().then(() => null, (e) => e)).code, "reconnect-failed");
      assert.deepEqual(why, [reason, reason]);
    }
  });

  test("a refusal in the stream before the welcome rejects connect(); an unknown last event id is dropped", async () => {
    const err = await sseClient((es) => {
      es.send({ type: "refused", reason: "refused" });
      es.serverClose(4003, "refused");
    }).then(() => null, (e) => e);
    assert.equal(err.code, "refused");
    assert.equal(err.closeCode, 4003);

    httpAnswer = { status: 400, body: { type: "error", code: "error", message: "invalid-last-event-id" } };
    const client = await sseClient((es) => {
      if (es.query.has("lastEventId")) es.fail();
      else es.welcome();
    });
    client.on("error", () => {});
    streams()[0].send({ type: "broadcast", data: 1, id: "b1" }, "from-another-broker");
    const reopened = nextEvent(client, "reconnect");
    streams()[0].drop();
    await reopened;
    assert.deepEqual(streams().map((es) => es.query.get("lastEventId")), [null, "from-another-broker", null]);
    client.close();
  });

  test("a reopen that fails reconnects without overlap; a 4009 on the old stream is the new one replacing it", async () => {
    const client = await sseClient((es) => {
      if (streams().length === 2) { es.fail(); return; } // BROKER_DUPLICATE_LOGIN=reject
      answering(es);
    });
    const a = client.subscribe(NEWS, () => {});
    const reopened = nextEvent(client, "reconnect");
    const r = await reopened;
    assert.deepEqual(r.restored, [a]);
    assert.deepEqual(streams().map((es) => es.closed), [true, true, false]);
    assert.deepEqual(streams()[2].items.map((i) => i.requestId), [a.id]);

    // BROKER_DUPLICATE_LOGIN=replace: the broker closes the old stream once the new one is in
    FakeEventSource.server = (es) => {
      es.welcome();
      streams()[2].serverClose(4009, "replaced");
      es.answer();
    };
    const closes = [];
    client.on("close", (ev) => closes.push(ev));
    const b = client.subscribe(CHAT1, () => {});
    await b.ready;
    await waitFor(() => streams()[3].items.length === 2 && streams()[2].closed, "the new stream current");
    await tick(20);
    assert.deepEqual(closes, []);
    assert.equal(client.state, "open");
    assert.equal(client.connectionId, "s4");
    client.close();
  });
});
