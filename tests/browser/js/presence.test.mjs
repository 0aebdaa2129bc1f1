// Presence in combroker.js: `subscribe(room, onData, { presence: true, onJoin, onLeave,
// onPresence })`, `sub.members`, `presence(room)`, `presenceStats(room)`. Scripted sockets for
// the ordering (a snapshot after every (re)subscribe and resume, join/leave frames held until
// it is in); the real broker (run by tests/browser/test_js_client.py) end to end, in a room of
// its own (a chat customer no other test uses: carol and billing may subscribe to any chat).

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import WS from "ws";

import { connect, memberKey } from "../../../broker/static/combroker/combroker.js";

import { FakeWS, uid, waitFor } from "./support.mjs";

const WS_URL = process.env.COMBROKER_WS_URL;
const noBroker = !WS_URL;
const ROOM = { target: "chat", customer: "1" };
FakeWS.welcomed = { allowed_rooms: [ROOM] };

const options = { WebSocket: FakeWS, minDelay: 1, maxDelay: 5, pingInterval: 0 };
const member = (login) => ({ login, profile: "agent" });
const event = (type, rid, login) => ({ type, requestId: rid, room: ROOM, member: member(login) });
const logins = (sub) => [...sub.members.values()].map((m) => `${m.login}:${m.connections}`).sort();

describe("presence (scripted broker)", () => {
  test("a snapshot after the subscribe; join/leave held until it is in, then applied", async () => {
    let ws;
    FakeWS.instances = [];
    FakeWS.server = (s) => { ws = s; s.welcome(); };
    const client = await connect("ws://fake/ws/", options);
    const calls = [];
    const sub = client.subscribe(ROOM, () => {}, {
      presence: true,
      onJoin: (m) => calls.push(`join ${m.login} [${logins(sub)}]`),
      onLeave: (m) => calls.push(`leave ${m.login} [${logins(sub)}]`),
      onPresence: (members, reply) => calls.push(`snapshot ${members.length} ${reply.anonymous}`),
    });
    await waitFor(() => ws.sent.length === 1, "the subscribe");
    assert.deepEqual(ws.sent[0], { type: "subscribe", room: ROOM, requestId: sub.id, presence: true });
    ws.serverSend({ code: "success", requestId: sub.id });
    await sub.ready;
    // the own join and bob's leave arrive before the snapshot's answer: held
    ws.serverSend(event("join", sub.id, "x"));
    ws.serverSend(event("leave", sub.id, "bob"));
    const query = await waitFor(() => ws.last("presence"), "the presence query");
    assert.deepEqual(query.room, ROOM);
    assert.deepEqual(calls, []);
    // the snapshot was read before bob left: the held leave is applied on top of it
    ws.serverSend({ type: "presence", requestId: query.requestId, room: ROOM, anonymous: 1,
      members: [{ ...member("bob"), connections: 2 }, { ...member("x"), connections: 1 }] });
    await waitFor(() => calls.length === 3, "three callbacks");
    assert.deepEqual(calls, ["snapshot 2 1", "join x [bob:2,x:1]", "leave bob [x:1]"]);
    assert.equal(sub.anonymous, 1);
    // live: a join is a member's first connection
    ws.serverSend(event("join", sub.id, "carol"));
    assert.deepEqual(logins(sub), ["carol:1", "x:1"]);
    assert.equal(sub.members.get(memberKey(member("carol"))).login, "carol");
    client.close();
  });

  test("a join is not taken for the reply to a subscribe sent again under its id", async () => {
    let ws;
    FakeWS.instances = [];
    FakeWS.server = (s) => { ws = s; s.welcome(); };
    const client = await connect("ws://fake/ws/", options);
    const joined = [];
    const sub = client.subscribe(ROOM, () => {}, { presence: true, onJoin: (m) => joined.push(m.login) });
    await waitFor(() => ws.sent.length === 1, "the subscribe");
    ws.serverSend({ code: "success", requestId: sub.id });
    await sub.ready;
    const q = await waitFor(() => ws.last("presence"), "the presence query");
    ws.serverSend({ type: "presence", requestId: q.requestId, room: ROOM, anonymous: 0, members: [] });
    ws.serverSend({ type: "resync" }); // the subscribe goes again, with the same id
    await waitFor(() => ws.sent.filter((f) => f.type === "subscribe").length === 2, "the re-subscribe");
    const again = ws.sent.filter((f) => f.type === "subscribe")[1];
    assert.equal(again.presence, true);
    ws.serverSend(event("join", sub.id, "dan"));
    // the re-subscribe's reply is still awaited: the join did not settle it, and was applied
    assert.deepEqual(client._pending.get(sub.id)[0].frame, again);
    assert.deepEqual(joined, ["dan"]);
    ws.serverSend({ code: "success", requestId: sub.id });
    await waitFor(() => ws.sent.filter((f) => f.type === "presence").length === 2, "a new snapshot");
    client.close();
  });

  test("after a reconnect the subscribe carries presence again; a resume asks for a snapshot", async () => {
    FakeWS.instances = [];
    let resumed = false;
    FakeWS.server = (s) => {
      if (!resumed) {
        s.welcome();
        return;
      }
      // the broker took the subscription back (resume): it is not sent again
      s.welcome({ resumed: true, subscriptions: [{ requestId: sub.id }] });
    };
    const client = await connect("ws://fake/ws/", options);
    const sub = client.subscribe(ROOM, () => {}, { presence: true });
    let ws = FakeWS.instances[0];
    await waitFor(() => ws.sent.length === 1, "the subscribe");
    ws.serverSend({ code: "success", requestId: sub.id });
    const q1 = await waitFor(() => ws.last("presence"), "the first snapshot");
    ws.serverSend({ type: "presence", requestId: q1.requestId, room: ROOM, anonymous: 0,
      members: [{ ...member("bob"), connections: 1 }] });
    await waitFor(() => sub.members.size === 1, "bob");

    // 1. dropped, not resumed: subscribed again with presence, and a new snapshot
    ws.serverClose(1006);
    await waitFor(() => FakeWS.instances.length === 2, "a new socket");
    ws = FakeWS.instances[1];
    await waitFor(() => ws.last("subscribe"), "the re-subscribe");
    assert.equal(ws.last("subscribe").presence, true);
    ws.serverSend({ code: "success", requestId: sub.id });
    const q2 = await waitFor(() => ws.last("presence"), "the second snapshot");
    ws.serverSend({ type: "presence", requestId: q2.requestId, room: ROOM, anonymous: 0, members: [] });
    await waitFor(() => sub.members.size === 0, "bob gone while we were away");

    // 2. dropped, resumed: no subscribe, but the members are read again
    resumed = true;
    ws.serverClose(1006);
    await waitFor(() => FakeWS.instances.length === 3, "a third socket");
    ws = FakeWS.instances[2];
    const q3 = await waitFor(() => ws.last("presence"), "the snapshot after the resume");
    assert.equal(ws.last("subscribe"), undefined);
    ws.serverSend({ type: "presence", requestId: q3.requestId, room: ROOM, anonymous: 0,
      members: [{ ...member("carol"), connections: 3 }] });
    await waitFor(() => sub.members.size === 1, "carol");
    assert.deepEqual(logins(sub), ["carol:3"]);
    client.close();
  });

  test("presence() and presenceStats() send their queries and resolve with the reply", async () => {
    let ws;
    FakeWS.server = (s) => { ws = s; s.welcome(); };
    const client = await connect("ws://fake/ws/", options);
    const p = client.presence(ROOM);
    const s = client.presenceStats(ROOM);
    await waitFor(() => ws.sent.length === 2, "two queries");
    assert.deepEqual(ws.sent.map((f) => f.type), ["presence", "presence_stats"]);
    ws.serverSend({ type: "presence_stats", requestId: ws.sent[1].requestId, room: ROOM,
      members: 2, connections: 3 });
    ws.serverSend({ type: "error", code: "error", message: "presence-not-enabled",
      requestId: ws.sent[0].requestId });
    assert.equal((await s).connections, 3);
    const err = await p.then(() => null, (e) => e);
    assert.equal(err.code, "presence-not-enabled");
    client.close();
  });
});

describe("presence against the broker", { skip: noBroker && "COMBROKER_WS_URL not set" }, () => {
  const clients = [];
  after(() => { for (const c of clients) c.close(); });
  const open = async (token) => {
    const c = await connect(WS_URL, { token, WebSocket: WS, pingInterval: 0 });
    clients.push(c);
    return c;
  };

  test("members, joins, leaves, the queries and their errors", async () => {
    const room = { target: "chat", customer: `p-${uid()}` };
    const carol = await open("carol");
    const seen = [];
    const sub = carol.subscribe(room, () => {}, {
      presence: true,
      onJoin: (m) => seen.push(`join ${m.login}`),
      onLeave: (m) => seen.push(`leave ${m.login}`),
    });
    await sub.ready;
    await waitFor(() => seen.includes("join carol"), "carol's own join");
    assert.deepEqual(logins(sub), ["carol:1"]);

    const billing = await open("billing");
    const tab2 = await open("billing");
    await billing.subscribe(room, () => {}).ready;
    await waitFor(() => seen.includes("join billing"), "billing's join");
    await tab2.subscribe(room, () => {}).ready;
    const reply = await carol.presence(room);
    assert.deepEqual(reply.members, [
      { login: "billing", profile: "service", connections: 2 },
      { login: "carol", profile: "super_agent", connections: 1 },
    ]);
    assert.equal(reply.anonymous, 0);
    const stats = await carol.presenceStats(room);
    assert.deepEqual([stats.type, stats.members, stats.connections], ["presence_stats", 2, 3]);

    billing.close();
    tab2.close();
    await waitFor(() => seen.includes("leave billing"), "billing's leave");
    assert.deepEqual(logins(sub), ["carol:1"]);
    assert.deepEqual(seen, ["join carol", "join billing", "leave billing"]);

    const denied = await carol.presence({ target: "secret" }).then(() => null, (e) => e);
    assert.equal(denied.code, "room-not-found");
  });
});
