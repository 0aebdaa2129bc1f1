// Issue 15 in combroker.js: resume across page reloads. The resume token kept in a Storage
// (sessionStorage in a browser) with its expiry, and the subscriptions a welcome says the
// broker holds adopted by the page's own subscribe calls. Scripted sockets; the real reload is
// tests/browser/test_reload.py (Chromium).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  createClient, connect, resumeStorageKey, resumeStorageOf,
} from "../../../broker/static/combroker/combroker.js";

import { FakeWS, nextEvent, tick, waitFor } from "./support.mjs";

const CHAT1 = { target: "chat", customer: "1" };
const NEWS = { target: "news" };
const URL_A = "ws://fake/ws/";
FakeWS.welcomed = { allowed_rooms: [CHAT1, NEWS], resume_ttl: 60 };
FakeWS.answer = (ws, frame) => {
  if (frame.type === "subscribe" || frame.type === "unsubscribe") {
    ws.serverSend({ code: "success", requestId: frame.requestId });
  }
};

// A Storage as the browser's: strings in, strings out.
class MemoryStorage {
  constructor() { this.items = new Map(); }
  getItem(k) { return this.items.has(k) ? this.items.get(k) : null; }
  setItem(k, v) { this.items.set(k, String(v)); }
  removeItem(k) { this.items.delete(k); }
  kept(url = URL_A) { return JSON.parse(this.getItem(resumeStorageKey(url)) || "null"); }
}

const base = { WebSocket: FakeWS, minDelay: 1, maxDelay: 5, pingInterval: 0 };
const presented = (ws) => new URL(ws.url).searchParams.get("resume_token");
const publish = (ws, requestId, offset, data) => ws.serverSend({ type: "publish", requestId,
  data, room: { customer: "1", target: "chat" }, id: `t${offset}`, offset });

describe("the resume token across page loads", () => {
  test("kept while open, with its expiry at the close, and presented by the next load", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const storage = new MemoryStorage();
    const client = await connect(URL_A, { ...base, resumeStorage: storage });
    assert.equal(client.resumeTtl, 60);
    assert.deepEqual(storage.kept(), { token: "rt-1", expiresAt: null }); // kept from the close
    assert.equal(client.resumeExpiresAt, null);
    const t0 = Date.now();
    client.close();
    const { expiresAt } = storage.kept();
    assert.ok(expiresAt >= t0 + 60000 && expiresAt <= Date.now() + 60000, String(expiresAt));
    assert.equal(client.resumeExpiresAt, expiresAt);

    // the next page load: presented at once, and readable before the welcome
    FakeWS.server = (s) => s.serverClose(1006); // and attempts that fail change nothing
    const next = createClient(URL_A, { ...base, resumeStorage: storage });
    assert.equal(next.resumeToken, "rt-1");
    assert.equal(next.resumeExpiresAt, expiresAt);
    next.open();
    await waitFor(() => FakeWS.instances.length >= 3, "two more attempts");
    assert.equal(presented(FakeWS.instances[1]), "rt-1");
    assert.equal(presented(FakeWS.instances[2]), "rt-1");
    next.close();
    assert.deepEqual(storage.kept(), { token: "rt-1", expiresAt });
    assert.equal(next.resumeExpiresAt, expiresAt);
    // one key per broker URL: another broker's page presents nothing
    assert.equal(createClient("ws://other/ws/", { ...base, resumeStorage: storage }).resumeToken,
      null);
  });

  test("an expired token is dropped, not presented", () => {
    const storage = new MemoryStorage();
    storage.setItem(resumeStorageKey(URL_A),
      JSON.stringify({ token: "old", expiresAt: Date.now() - 1 }));
    const client = createClient(URL_A, { ...base, resumeStorage: storage });
    assert.equal(client.resumeToken, null);
    assert.equal(storage.kept(), null);
  });

  test("pagehide records the expiry", async () => {
    const target = new EventTarget();
    globalThis.addEventListener = target.addEventListener.bind(target);
    try {
      FakeWS.instances = [];
      FakeWS.server = (s) => s.welcome();
      const storage = new MemoryStorage();
      const client = await connect(URL_A, { ...base, resumeStorage: storage });
      assert.equal(storage.kept().expiresAt, null);
      target.dispatchEvent(new Event("pagehide"));
      assert.ok(storage.kept().expiresAt > Date.now());
      client.close();
    } finally {
      delete globalThis.addEventListener;
    }
  });

  test("storage that fails is no storage: the client works as without it", async () => {
    const broken = {
      getItem() { throw new Error("SecurityError"); },
      setItem() { throw new Error("QuotaExceededError"); },
      removeItem() { throw new Error("SecurityError"); },
    };
    assert.equal(resumeStorageOf(broken), null);
    assert.equal(resumeStorageOf(null), null);
    assert.equal(resumeStorageOf(undefined), null); // Node: no sessionStorage
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome();
    const client = await connect(URL_A, { ...base, resumeStorage: broken });
    assert.equal(client.resumeToken, "rt-1"); // the token of the welcome, for reconnects
    client.close();
    assert.ok(client.resumeExpiresAt > Date.now());
  });
});

describe("subscriptions the broker gives back", () => {
  test("one both resumed and persistent is held once, as persistent", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome({ resumed: true,
      subscriptions: [{ requestId: 9, room: CHAT1 }], persistent: [{ requestId: 9, room: CHAT1 }] });
    const client = await connect(URL_A, { ...base, adoptTimeout: 30 });
    assert.equal(client.unclaimed.size, 1);
    const ev = await nextEvent(client, "unclaimed");
    assert.equal(ev.persistent, true);
    await tick(20);
    assert.equal(FakeWS.instances[0].last("unsubscribe"), undefined);
    client.close();
  });

  test("request ids differ between page loads", () => {
    const a = createClient(URL_A, base);
    const b = createClient(URL_A, base);
    assert.notEqual(a._nextId, b._nextId);
  });

  test("adopted by a later subscribe to the same room: held deliveries first, once, in order",
    async () => {
      FakeWS.instances = [];
      FakeWS.server = (s) => s.welcome({ resumed: true,
        subscriptions: [{ requestId: 77, room: CHAT1, offset: 7, recovered: true }] });
      const client = await connect(URL_A, { ...base, adoptTimeout: 60000 });
      const ws = FakeWS.instances[0];
      publish(ws, 77, 6, "six"); // the replay arrives before the page subscribes
      publish(ws, 77, 7, "seven");
      assert.equal(client.unclaimed.size, 1);
      // a subscribe to another room never takes the restored id
      client._nextId = 77;
      const news = client.subscribe(NEWS, () => {});
      assert.notEqual(news.id, 77);
      const got = [];
      const sub = client.subscribe({ customer: "1", target: "chat" }, (data) => got.push(data));
      assert.equal(sub.id, 77);
      assert.ok(sub.adopted && sub.active);
      await sub.ready;
      assert.deepEqual(got, ["six", "seven"]);
      assert.equal(sub.offset, 7);
      publish(ws, 77, 7, "seven again"); // a duplicate is dropped
      publish(ws, 77, 8, "eight");
      assert.deepEqual(got, ["six", "seven", "eight"]);
      // no subscribe went out for it; the other room's did
      assert.deepEqual(ws.sent.filter((f) => f.type === "subscribe").map((f) => f.requestId),
        [news.id]);
      assert.equal(client.unclaimed.size, 0);
      await sub.unsubscribe();
      assert.equal(ws.last("unsubscribe").requestId, 77);
      client.close();
    });

  test("adopted by a subscribe made before the welcome, which then takes the restored id",
    async () => {
      FakeWS.instances = [];
      FakeWS.server = () => {};
      const client = createClient(URL_A, base);
      client.open();
      const sub = client.subscribe(CHAT1, () => {}, { presence: true });
      const ws = await waitFor(() => FakeWS.instances[0], "the socket");
      ws.welcome({ resumed: true, subscriptions: [
        { requestId: "p", room: CHAT1, offset: 3, presence: true }] });
      await sub.ready;
      assert.equal(sub.id, "p");
      assert.equal(sub.offset, 3);
      assert.equal(ws.sent.filter((f) => f.type === "subscribe").length, 0);
      // the snapshot of a presence subscription is asked for, once
      await waitFor(() => ws.last("presence"), "the presence snapshot");
      await tick(20);
      assert.equal(ws.sent.filter((f) => f.type === "presence").length, 1);
      client.close();
    });

  test("other options are not the same subscription", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome({ resumed: true,
      subscriptions: [{ requestId: 5, room: CHAT1, presence: true }] });
    const client = await connect(URL_A, { ...base, adoptTimeout: 60000 });
    const plain = client.subscribe(CHAT1, () => {}); // no presence
    await plain.ready;
    assert.notEqual(plain.id, 5);
    assert.equal(client.unclaimed.size, 1);
    client.close();
  });

  test("not claimed within adoptTimeout: unsubscribed, and said", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome({ resumed: true,
      subscriptions: [{ requestId: 77, room: CHAT1, offset: 1 }] });
    const client = await connect(URL_A, { ...base, adoptTimeout: 30 });
    publish(FakeWS.instances[0], 77, 2, "two");
    const ev = await nextEvent(client, "unclaimed");
    assert.deepEqual(ev, { requestId: 77, room: CHAT1, persistent: false, reason: "timeout",
      dropped: 1 });
    assert.equal(FakeWS.instances[0].last("unsubscribe").requestId, 77);
    const later = client.subscribe(CHAT1, () => {}); // a new subscription now
    await later.ready;
    assert.notEqual(later.id, 77);
    client.close();
  });

  test("more than adoptMaxHeld deliveries waiting: released", async () => {
    FakeWS.instances = [];
    FakeWS.server = (s) => s.welcome({ resumed: true,
      subscriptions: [{ requestId: 77, room: CHAT1 }] });
    const client = await connect(URL_A, { ...base, adoptTimeout: 60000, adoptMaxHeld: 2 });
    const released = nextEvent(client, "unclaimed");
    for (const n of [1, 2, 3]) publish(FakeWS.instances[0], 77, n, n);
    assert.equal((await released).reason, "overflow");
    assert.equal(client.unclaimed.size, 0);
    client.close();
  });

  test("persistent subscriptions of the welcome are adopted too, and never unsubscribed unclaimed",
    async () => {
      FakeWS.instances = [];
      FakeWS.server = (s) => s.welcome({ persistent: [
        { requestId: "keep-1", room: NEWS }, { requestId: "keep-2", room: CHAT1 },
        { requestId: "gone", room: { target: "x" }, refused: "room-not-found" }] });
      const client = await connect(URL_A, { ...base, adoptTimeout: 30 });
      const ws = FakeWS.instances[0];
      const got = [];
      ws.serverSend({ type: "publish", requestId: "keep-1", data: "n1", room: NEWS, id: "x" });
      const sub = client.subscribe(NEWS, (d) => got.push(`${d} on ${sub.id}`));
      assert.equal(sub.id, "keep-1");
      ws.serverSend({ type: "publish", requestId: "keep-1", data: "n2", room: NEWS, id: "y" });
      await sub.ready;
      assert.deepEqual(got, ["n1 on keep-1", "n2 on keep-1"]); // the held one first
      assert.deepEqual([...client.unclaimed.keys()], ['"keep-2"']); // a refused one is not held
      const ev = await nextEvent(client, "unclaimed");
      assert.equal(ev.requestId, "keep-2");
      assert.equal(ev.persistent, true);
      await tick(20);
      assert.equal(ws.last("unsubscribe"), undefined); // only an explicit unsubscribe ends it
      client.close();
    });
});
