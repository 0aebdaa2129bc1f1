// Unit tests of broker/static/combroker/combroker.js under Node's test runner.
//
// Run by tests/browser/test_js_client.py, which starts a real broker (`manage.py runbroker`,
// demo users) and passes COMBROKER_WS_URL, COMBROKER_BASE_URL and COMBROKER_TRIGGER_TOKEN.
// Without them only the tests that need no broker run. Node 20 has no global WebSocket: the
// `ws` package is injected with connect(url, {WebSocket: WS}).
//
//   cd tests/browser && COMBROKER_WS_URL=ws://127.0.0.1:8000/ws/ ... node --test js/

import assert from "node:assert/strict";
import net from "node:net";
import { after, describe, test } from "node:test";

import WS from "ws";

import {
  CLOSE_CODES, CombrokerClient, CombrokerError, backoffDelay, connect, websocketUrl,
} from "../../../broker/static/combroker/combroker.js";

import { FakeWS, nextEvent, uid, waitFor } from "./support.mjs";

const WS_URL = process.env.COMBROKER_WS_URL;
const BASE_URL = process.env.COMBROKER_BASE_URL;
const TRIGGER_TOKEN = process.env.COMBROKER_TRIGGER_TOKEN;
const noBroker = !WS_URL || !BASE_URL || !TRIGGER_TOKEN;
const NEWS = { target: "news" };
const CHAT1 = { target: "chat", customer: "1" };
FakeWS.welcomed = { allowed_rooms: [NEWS], resume_token: null };


async function trigger(rooms, data) {
  const r = await fetch(`${BASE_URL}/trigger`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${TRIGGER_TOKEN}` },
    body: JSON.stringify({ rooms, data }),
  });
  const body = await r.text();
  assert.equal(r.status, 202, body);
  return JSON.parse(body);
}

// A WebSocket class that records every frame the client sends.
function recordingWS(log) {
  return class extends WS {
    send(data, ...rest) {
      log.push(JSON.parse(data));
      return super.send(data, ...rest);
    }
  };
}

const clients = [];
function open(token, options = {}) {
  const p = connect(WS_URL, { token, WebSocket: WS, ...options });
  p.then((c) => clients.push(c), () => {});
  return p;
}
after(() => { for (const c of clients) c.close(); });

// ---------------------------------------------------------------- no broker needed

describe("backoff", () => {
  test("every delay stays within [minDelay * (1 - jitter), maxDelay]", () => {
    const opts = { minDelay: 500, maxDelay: 10000, factor: 2, jitter: 0.5 };
    for (let attempt = 1; attempt <= 200; attempt++) {
      for (const r of [0, 0.25, 0.5, 0.999999, 1]) {
        const d = backoffDelay(attempt, opts, () => r);
        assert.ok(d >= 250 && d <= 10000, `attempt ${attempt} random ${r}: ${d}`);
      }
    }
  });

  test("grows exponentially, then is capped", () => {
    const opts = { minDelay: 100, maxDelay: 3000, factor: 2, jitter: 0.5 };
    const top = (n) => backoffDelay(n, opts, () => 0);
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 50, 5000].map(top),
      [100, 200, 400, 800, 1600, 3000, 3000, 3000, 3000]);
    // full jitter at the other end of the range
    assert.equal(backoffDelay(3, opts, () => 1), 200);
  });

  test("jitter spreads the delays", () => {
    const seen = new Set();
    for (let i = 0; i < 50; i++) seen.add(backoffDelay(4, { minDelay: 1000, jitter: 0.5 }));
    assert.ok(seen.size > 10, `only ${seen.size} distinct delays`);
  });
});

describe("client logic (scripted socket)", () => {
  test("replies are matched by requestId, whatever their order", async () => {
    let ws;
    FakeWS.server = (s) => { ws = s; s.welcome(); };
    const client = await connect("ws://fake/ws/", { WebSocket: FakeWS, pingInterval: 0 });
    const a = client.send("/agent/a", 1);
    const b = client.publish(NEWS, 2);
    const c = client.admin("stats");
    const d = client.send("/agent/d", 4);
    await waitFor(() => ws.sent.length === 4, "4 requests");
    const ids = ws.sent.map((f) => f.requestId);
    assert.equal(new Set(ids).size, 4, `requestIds not unique: ${ids}`);
    // answer in reverse order, one with an error
    ws.serverSend({ code: "error", type: "error", message: "destination-not-found", requestId: ids[3] });
    ws.serverSend({ code: "success", type: "admin", action: "stats", requestId: ids[2] });
    ws.serverSend({ code: "success", requestId: ids[1], id: "t-b" });
    ws.serverSend({ code: "success", requestId: ids[0], id: "m-a" });
    assert.equal((await a).id, "m-a");
    assert.equal((await b).id, "t-b");
    assert.equal((await c).action, "stats");
    const err = await d.then(() => null, (e) => e);
    assert.ok(err instanceof CombrokerError && err instanceof Error);
    assert.equal(err.code, "destination-not-found");
    client.close();
  });

  test("a delivery with a requestId is not taken for a reply", async () => {
    let ws;
    FakeWS.server = (s) => { ws = s; s.welcome(); };
    const client = await connect("ws://fake/ws/", { WebSocket: FakeWS, pingInterval: 0 });
    const got = [];
    const sub = client.subscribe(NEWS, (data) => got.push(data));
    await waitFor(() => ws.sent.length === 1, "subscribe");
    const id = ws.sent[0].requestId;
    assert.equal(ws.sent[0].type, "subscribe");
    ws.serverSend({ code: "success", requestId: id });
    assert.equal(await sub.ready, sub);
    const un = sub.unsubscribe();
    await waitFor(() => ws.sent.length === 2, "unsubscribe");
    assert.deepEqual(ws.sent[1], { type: "unsubscribe", requestId: id });
    ws.serverSend({ type: "publish", requestId: id, data: "late", room: NEWS, id: "t1" });
    ws.serverSend({ code: "success", requestId: id });
    await un;
    assert.deepEqual(got, []); // unsubscribed before the delivery arrived
    client.close();
  });

  test("reconnect attempts back off within bounds, then give up after maxAttempts", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.serverClose(1006, "");
    const delays = [];
    const client = new CombrokerClient("ws://fake/ws/", {
      WebSocket: FakeWS, minDelay: 20, maxDelay: 80, jitter: 0.5, maxAttempts: 6,
    });
    client.on("reconnecting", (ev) => delays.push(ev.delay));
    const err = await client.open().then(() => null, (e) => e);
    assert.equal(err.code, "reconnect-failed");
    assert.equal(delays.length, 6);
    assert.equal(FakeWS.instances.length, 7);
    for (const d of delays) assert.ok(d >= 10 && d <= 80, `delay ${d}`);
    assert.ok(delays.slice(3).every((d) => d >= 40), `not growing: ${delays}`);
    assert.equal(client.state, "closed");
  });

  test("kicked, replaced and refused are final: no reconnect", async () => {
    for (const code of [CLOSE_CODES.KICKED, CLOSE_CODES.REPLACED, CLOSE_CODES.REFUSED]) {
      FakeWS.instances = [];
      FakeWS.server = (s) => s.welcome();
      const client = await connect("ws://fake/ws/", { WebSocket: FakeWS, minDelay: 1, pingInterval: 0 });
      const closed = nextEvent(client, "close");
      FakeWS.instances[0].serverClose(code, "");
      const ev = await closed;
      assert.equal(ev.code, code);
      assert.equal(ev.willReconnect, false);
      await new Promise((r) => setTimeout(r, 30));
      assert.equal(FakeWS.instances.length, 1);
      assert.equal(client.state, "closed");
    }
  });

  test("a resume_token from the welcome is presented on reconnect", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome({ resume_token: "rt-1" });
    const client = await connect("ws://fake/ws/?x=1", {
      WebSocket: FakeWS, token: "tok", minDelay: 1, maxDelay: 5, pingInterval: 0,
    });
    const reopened = nextEvent(client, "reconnect");
    FakeWS.instances[0].serverClose(1001, "");
    await reopened;
    const u = new URL(FakeWS.instances[1].url);
    assert.equal(u.searchParams.get("resume_token"), "rt-1");
    assert.equal(u.searchParams.get("token"), "tok");
    assert.equal(u.searchParams.get("x"), "1");
    assert.equal(FakeWS.instances[1].protocol, "combroker.v1");
    client.close();
  });

  test("a missing pong drops the connection and reconnects", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome(); // never answers pings
    const client = await connect("ws://fake/ws/", {
      WebSocket: FakeWS, pingInterval: 30, pingTimeout: 60, minDelay: 1, maxDelay: 5,
    });
    const closed = await nextEvent(client, "close");
    assert.equal(closed.reason, "ping-timeout");
    assert.equal(closed.willReconnect, true);
    assert.equal(FakeWS.instances[0].sent[0].type, "ping");
    await waitFor(() => FakeWS.instances.length >= 2, "a new socket");
    client.close();
  });

  test("websocketUrl maps http(s) to ws(s) and adds the query", () => {
    assert.equal(websocketUrl("http://h:1/ws/", { token: "a b" }), "ws://h:1/ws/?token=a+b");
    assert.equal(websocketUrl("https://h/ws/"), "wss://h/ws/");
    assert.equal(websocketUrl("ws://h/ws/?a=1", { t: undefined }), "ws://h/ws/?a=1");
  });
});

// ---------------------------------------------------------------- against the real broker

// A TCP proxy in front of the broker that the tests can cut, refuse or freeze.
function startProxy(target) {
  const sockets = new Set();
  const state = { frozen: false };
  let server = null;
  const onClient = (client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    client.on("data", (d) => { if (!state.frozen) upstream.write(d); });
    upstream.on("data", (d) => { if (!state.frozen) client.write(d); });
    for (const s of [client, upstream]) {
      s.on("error", () => {});
      s.on("close", () => { sockets.delete(s); client.destroy(); upstream.destroy(); });
    }
  };
  return {
    state,
    // a new listening server each time: a closed one may still be draining its connections
    listen(port = 0) {
      server = net.createServer(onClient);
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, "127.0.0.1", () => resolve(server.address().port));
      });
    },
    cut() { for (const s of sockets) s.destroy(); },
    stopListening() { if (server) server.close(); server = null; },
    close() { this.stopListening(); this.cut(); },
  };
}

describe("a server that never answers the handshake", () => {
  test("openTimeout gives up on the socket, retries, and maxAttempts ends it", async () => {
    const held = new Set();
    const server = net.createServer((s) => { held.add(s); s.on("error", () => {}); });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address();
    const closes = [];
    const client = new CombrokerClient(`ws://127.0.0.1:${port}/ws/`, {
      WebSocket: WS, openTimeout: 150, minDelay: 10, maxDelay: 20, maxAttempts: 2,
    });
    client.on("close", (ev) => closes.push(ev.reason));
    const err = await client.open().then(() => null, (e) => e);
    assert.equal(err.code, "reconnect-failed");
    assert.deepEqual(closes, ["open-timeout", "open-timeout", "open-timeout"]);
    for (const s of held) s.destroy();
    server.close();
  });
});

describe("against the broker", { skip: noBroker && "COMBROKER_WS_URL etc. not set" }, () => {
  test("welcome, and the connect() promise resolves with the client", async () => {
    const alice = await open("alice");
    assert.equal(alice.state, "open");
    assert.equal(alice.loginId, "alice");
    assert.equal(alice.profile, "agent");
    assert.equal(alice.destination, "/agent/alice");
    assert.equal(typeof alice.connectionId, "string");
    assert.deepEqual(alice.allowedRooms, [CHAT1, NEWS]);
    alice.close();
    assert.equal(alice.state, "closed");
  });

  test("a refused login rejects connect() with code refused", async () => {
    const err = await open("nobody").then(() => null, (e) => e);
    assert.ok(err instanceof CombrokerError);
    assert.equal(err.code, "refused");
    assert.equal(err.closeCode, 4003);
  });

  test("concurrent requests each get their own reply", async () => {
    const sent = [];
    const alice = await open("alice", { WebSocket: recordingWS(sent), pingInterval: 0 });
    const pings = Array.from({ length: 20 }, () => alice.ping());
    const ok = alice.subscribe(NEWS, () => {});
    const bad = alice.subscribe({ target: "chat", customer: "2" }, () => {});
    const invalid = alice.subscribe({ target: ["x"] }, () => {});
    const nowhere = alice.send("/agent/nobody-" + uid(), "hi");
    const status = alice.status();
    const admin = alice.admin("connections");
    const results = await Promise.allSettled([ok.ready, bad.ready, invalid.ready, nowhere,
      status, admin, ...pings]);
    const codes = results.map((r) => (r.status === "fulfilled" ? "ok" : r.reason.code));
    assert.deepEqual(codes.slice(0, 6), ["ok", "room-not-found", "invalid-room",
      "destination-not-found", "message-type-not-allowed", "message-type-not-allowed"]);
    assert.ok(codes.slice(6).every((c) => c === "ok"), codes.join(","));
    for (const r of results.slice(1, 6)) assert.ok(r.reason instanceof Error);
    const ids = sent.map((f) => f.requestId);
    assert.equal(new Set(ids).size, ids.length, `requestIds reused: ${ids}`);
    assert.deepEqual(alice.subscriptions.map((s) => s.id), [ok.id]); // refused ones are dropped
  });

  test("subscribe, receive, unsubscribe", async () => {
    const alice = await open("alice");
    const tag = uid();
    const got = [];
    const sub = alice.subscribe(CHAT1, (data, frame) => got.push([data, frame]));
    await sub.ready;
    assert.equal(sub.active, true);
    await trigger([CHAT1], { tag, n: 1 });
    await waitFor(() => got.length === 1, "the delivery");
    const [data, frame] = got[0];
    assert.deepEqual(data, { tag, n: 1 });
    assert.equal(frame.requestId, sub.id);
    assert.deepEqual(frame.room, { customer: "1", target: "chat" });
    await sub.unsubscribe();
    assert.deepEqual(alice.subscriptions, []);
    // a second subscription is the barrier: once it hears n=2, the first would have too
    const got2 = [];
    const sub2 = alice.subscribe(CHAT1, (d) => got2.push(d));
    await sub2.ready;
    await trigger([CHAT1], { tag, n: 2 });
    await waitFor(() => got2.length === 1, "the barrier delivery");
    assert.equal(got.length, 1);
  });

  test("direct messages raise 'message'; a super agent watching agents gets a copy", async () => {
    const [alice, bob, carol] = await Promise.all([open("alice"), open("bob"), open("carol")]);
    const watched = [];
    const watch = carol.subscribe({ client: "*", profile: "agent" }, (d) => watched.push(d));
    await watch.ready;
    const inbox = nextEvent(bob, "message");
    const tag = uid();
    const reply = await alice.send("/agent/bob", { tag });
    assert.equal(reply.code, "success");
    const msg = await inbox;
    assert.equal(msg.from, "/agent/alice");
    assert.equal(msg.to, "/agent/bob");
    assert.deepEqual(msg.data, { tag });
    await waitFor(() => watched.some((m) => m.data && m.data.tag === tag), "the watcher's copy");
  });

  test("admin: connections, stats, and a kick that is final", async () => {
    const [root, alice] = await Promise.all([open("root"), open("alice")]);
    const conns = await root.admin("connections");
    assert.ok(conns.connections.some((c) => c.id === alice.connectionId && c.login_id === "alice"));
    const stats = await root.admin("stats");
    assert.equal(typeof stats.stats.connections, "number");
    const closed = nextEvent(alice, "close");
    const kick = await root.admin("kick", { connection_id: alice.connectionId });
    assert.deepEqual(kick.kicked, [alice.connectionId]);
    const ev = await closed;
    assert.equal(ev.code, 4010);
    assert.equal(ev.reason, "kicked");
    assert.equal(ev.willReconnect, false);
    assert.equal(alice.state, "closed");
    const err = await root.admin("kick", { connection_id: "nope" }).then(() => null, (e) => e);
    assert.equal(err.code, "connection-not-found");
    const denied = await alice.send("/agent/bob", 1).then(() => null, (e) => e);
    assert.equal(denied.code, "closed");
  });

  test("after a dropped connection the client reconnects and restores its subscriptions", async () => {
    const proxy = startProxy(new URL(WS_URL));
    const port = await proxy.listen();
    const url = WS_URL.replace(/:\d+\//, `:${port}/`);
    const alice = await connect(url, {
      token: "alice", WebSocket: WS, minDelay: 50, maxDelay: 400, pingInterval: 0,
    });
    clients.push(alice);
    const tag = uid();
    const got = [];
    const sub = alice.subscribe(CHAT1, (d) => got.push(d));
    await sub.ready;
    const firstConn = alice.connectionId;

    // 1. cut the TCP connection: the client sees 1006 and reconnects at once
    const events = [];
    for (const t of ["close", "reconnecting", "open", "reconnect"]) alice.on(t, () => events.push(t));
    let reopened = nextEvent(alice, "reconnect");
    proxy.cut();
    let ev = await reopened;
    assert.deepEqual(ev.restored.map((s) => s.id), [sub.id]);
    assert.deepEqual(ev.failed, []);
    assert.notEqual(alice.connectionId, firstConn);
    assert.deepEqual(events.slice(0, 2), ["close", "reconnecting"]);
    await trigger([CHAT1], { tag, n: 1 });
    await waitFor(() => got.some((d) => d.tag === tag && d.n === 1), "a delivery after the cut");

    // 2. the broker is unreachable for a while: attempts back off, then it comes back
    proxy.stopListening();
    const delays = [];
    alice.on("reconnecting", (e) => delays.push(e.delay));
    reopened = nextEvent(alice, "reconnect");
    proxy.cut();
    await waitFor(() => delays.length >= 3, "three failed attempts");
    await proxy.listen(port);
    ev = await reopened;
    assert.ok(ev.attempts >= 3, `attempts ${ev.attempts}`);
    assert.ok(delays.every((d) => d >= 25 && d <= 400), `delays ${delays}`);
    assert.equal(alice.reconnects, 2);
    assert.equal(sub.active, true);
    await trigger([CHAT1], { tag, n: 2 });
    await waitFor(() => got.some((d) => d.tag === tag && d.n === 2), "a delivery after the outage");
    assert.equal(got.filter((d) => d.tag === tag).length, 2); // exactly once each
    alice.close();
    proxy.close();
  });

  test("keep-alive: a frozen link is detected by the ping and re-opened", async () => {
    const proxy = startProxy(new URL(WS_URL));
    const port = await proxy.listen();
    const url = WS_URL.replace(/:\d+\//, `:${port}/`);
    const alice = await connect(url, {
      token: "alice", WebSocket: WS, pingInterval: 100, pingTimeout: 300, minDelay: 50, maxDelay: 200,
    });
    clients.push(alice);
    const sub = alice.subscribe(NEWS, () => {});
    await sub.ready;
    const closed = nextEvent(alice, "close");
    const reopened = nextEvent(alice, "reconnect");
    proxy.state.frozen = true;
    const ev = await closed;
    assert.equal(ev.reason, "ping-timeout");
    proxy.state.frozen = false;
    proxy.cut(); // the old, frozen connection
    const r = await reopened;
    assert.deepEqual(r.restored.map((s) => s.id), [sub.id]);
    alice.close();
    proxy.close();
  });
});
