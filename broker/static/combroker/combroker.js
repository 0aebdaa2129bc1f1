// combroker.js: the browser (and Node) client of combroker's rich WebSocket dialect, combroker.v1.
//
// Dependency-free ES module, no build step. Contract: PROTOCOL.md §3.2, frames: docs/protocol.md.
//
//   import { connect } from "/static/combroker/combroker.js";
//   const client = await connect("/ws/", { token: "alice" });
//   const sub = client.subscribe({ target: "news" }, (data, frame) => console.log(data));
//   await sub.ready;                       // the broker accepted the subscription
//   await client.send("/agent/bob", "hi"); // direct message
//   await sub.unsubscribe();
//   client.on("message", (m) => console.log(m.from, m.data));
//
// - Every request gets a requestId chosen here; its promise settles with the reply that echoes
//   it. Error replies reject with a CombrokerError whose `.code` is the contract's error code
//   (`room-not-found`, `destination-not-found`, ...).
// - The connection is kept alive with {"type":"ping"} and re-opened after a drop with jittered,
//   bounded exponential backoff. Subscriptions are restored on the new connection with the same
//   requestIds (a `resume_token` from the welcome is presented when the broker gives one).
// - History rooms (docs/guarantees.md): each subscription remembers the last `offset` it got;
//   a resumed connection gets its missed triggers from the broker, and a subscription the
//   broker did not restore is sent again with `since`, so nothing is lost either way. A
//   trigger delivered twice to one subscription (same id) reaches `onData` once.
// - Acknowledged messages: `send(to, data, { ack: true })`; the recipient gets the message
//   event with `ack: true` and calls `confirm(id)`; the sender gets a "confirmed" event.
// - Presence: `subscribe(room, onData, { presence: true, onJoin, onLeave, onPresence })` keeps
//   `sub.members` (who holds a subscription to the room) up to date: a snapshot (the
//   `presence` query) after every (re)subscribe and resume, then the join/leave frames.
//   `presence(room)` and `presenceStats(room)` ask once.
// - Node 20 has no global WebSocket: pass one, e.g. `connect(url, { WebSocket: require("ws") })`.
// - Page reloads (docs/protocol.md "Resume across page reloads"): the resume token is kept in
//   `sessionStorage` (per tab, per broker URL; `resumeStorage`), with when its state expires
//   (`resumeExpiresAt`), and a new page load presents it. The subscriptions the broker gives
//   back are adopted by the page's own `subscribe` calls to the same room and options; what
//   they missed is held until then. Those not claimed within `adoptTimeout` are unsubscribed.
// - SSE (issue 15): when the WebSocket fails to open (a proxy that blocks it), the client reads
//   the broker's event stream (`GET /sse/`, EventSource) instead; `client.transport` says which
//   is used. SSE only receives: `subscribe`/`unsubscribe` reopen the stream with the new list,
//   any other request rejects with `unsupported-transport`. The rules: SseConnection below.

export const SUBPROTOCOL = "combroker.v1";

/** WebSocket close codes of the contract (PROTOCOL §3, "Close codes"). */
export const CLOSE_CODES = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ORIGIN_NOT_ALLOWED: 1008,
  MESSAGE_TOO_BIG: 1009,
  AUTH_UNAVAILABLE: 1011,
  REFUSED: 4003,
  SLOW: 4008,
  REPLACED: 4009,
  KICKED: 4010,
  RATE_LIMITED: 4029,
});

/** What each close code means, as an error code (used when the server sends no reason). */
export const CLOSE_REASONS = Object.freeze({
  1000: "closed",
  1001: "going-away",
  1006: "connection-lost",
  1008: "origin-not-allowed",
  1009: "message-too-big",
  1011: "auth-unavailable",
  4003: "refused",
  4008: "slow",
  4009: "replaced",
  4010: "kicked",
  4029: "rate-limited",
});

// After these the server meant it: reconnecting would undo a refusal, a kick or a replacement.
const FINAL_CLOSE_CODES = new Set([1008, 4003, 4009, 4010]);

export const DEFAULTS = Object.freeze({
  token: undefined, // string, or a function returning a string (or a promise of one)
  // A connection ticket (docs/protocol.md "Connection tickets"): a function returning a fresh
  // one (or a promise of one) at each connect, since a ticket opens one connection only.
  ticket: undefined,
  params: undefined, // extra query parameters for the WebSocket URL
  reconnect: true,
  minDelay: 500, // ms, first reconnect delay (before jitter)
  maxDelay: 10000, // ms, bound of any reconnect delay
  factor: 2,
  jitter: 0.5, // each delay is drawn uniformly from [base * (1 - jitter), base]
  maxAttempts: Infinity, // consecutive failed attempts before giving up
  rateLimitedDelay: 5000, // ms, least delay after a 4029 close
  pingInterval: 20000, // ms between keep-alive pings; 0 disables them
  pingTimeout: 10000, // ms without the pong before the connection is dropped and re-opened
  openTimeout: 15000, // ms for the socket to open and the welcome to arrive
  requestTimeout: 15000, // ms before a request's promise rejects with code "timeout"; 0: never
  WebSocket: undefined, // a WebSocket class; default globalThis.WebSocket
  wsOptions: undefined, // third argument for the WebSocket constructor (Node's ws: headers, ...)
  // Page reloads: where the resume token is kept across page loads (a Storage: getItem,
  // setItem, removeItem). Default: sessionStorage where it works; null: not kept.
  resumeStorage: undefined,
  adoptTimeout: 10000, // ms a subscription the broker gave back waits for the page's subscribe
  adoptMaxHeld: 1000, // deliveries held for one such subscription until then; more: released
  transport: "auto", // "auto" (WebSocket, SSE when it fails to open) | "websocket" | "sse"
  sseUrl: undefined, // the event stream's URL; default: the WebSocket URL's host, path /sse/
  EventSource: undefined, // an EventSource class; default globalThis.EventSource
  withCredentials: undefined, // EventSource's; default: true unless a token or ticket is in the URL
  fetch: undefined, // for the status of a refused SSE stream; default globalThis.fetch
});

/** A rejected request or a failed connection. `code` is the contract's error code. */
export class CombrokerError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "CombrokerError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/**
 * The delay before reconnect attempt `attempt` (1, 2, ...): exponential from minDelay, bounded
 * by maxDelay, with jitter. Always within [minDelay * (1 - jitter), maxDelay].
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const o = { ...DEFAULTS, ...options };
  const n = Math.max(1, Math.floor(attempt || 1));
  const base = Math.min(o.maxDelay, o.minDelay * Math.pow(o.factor, n - 1));
  const jitter = Math.min(Math.max(o.jitter, 0), 1);
  return Math.round(base * (1 - jitter * random()));
}

/** Turn "/ws/", "http://host/ws/" or "ws://host/ws/" into a ws:// or wss:// URL. */
export function websocketUrl(url, query = {}) {
  const loc = globalThis.location;
  const u = new URL(url, loc && loc.href ? loc.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return withQuery(u, query);
}

/**
 * The event stream's URL (SSE): `explicit` (relative to the page) if given, else the WebSocket
 * URL's host with http(s) and path /sse/, its query (the credentials: token, ...) kept; `query`
 * added. "ws://h/ws/?token=t" -> "http://h/sse/?token=t".
 */
export function sseUrl(url, query = {}, explicit = undefined) {
  const loc = globalThis.location;
  let u;
  if (explicit) {
    u = new URL(explicit, loc && loc.href ? loc.href : undefined);
  } else {
    u = new URL(websocketUrl(url));
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = "/sse/";
  }
  return withQuery(u, query);
}

function withQuery(u, query) {
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null) u.searchParams.set(k, String(v));
  }
  return u.toString();
}

/**
 * A presence member's identity: realm (static-key logins only), profile and login. Members of
 * `sub.members` are keyed by it.
 */
export function memberKey(member) {
  return JSON.stringify([member.realm || "", member.profile, member.login]);
}

/** A subscription: `ready` settles with the broker's answer; `unsubscribe()` ends it. */
export class Subscription {
  constructor(client, id, room, onData, options = {}) {
    this.client = client;
    this.id = id;
    this.room = room;
    this.onData = onData;
    // Presence (asked with `presence: true`): the room's members, memberKey -> {login, profile,
    // realm?, connections}. `connections` is the snapshot's count (1 for a member that joined
    // since: a join is a member's first connection); `anonymous` the snapshot's anonymous count.
    this.presence = options.presence === true;
    // Only the triggers whose tags this filter matches (docs/protocol.md "Event filters").
    this.filter = options.filter === undefined ? null : options.filter;
    // Kept by the broker for the login: every later connection of it gets it back.
    this.persistent = options.persistent === true;
    this.onJoin = options.onJoin;
    this.onLeave = options.onLeave;
    this.onPresence = options.onPresence;
    this.members = new Map();
    this.anonymous = 0;
    this._presenceGen = 0; // the snapshot request whose answer counts
    this._presenceBuffer = null; // join/leave frames held while a snapshot is asked for
    this.active = false; // the broker holds it on the current connection
    this.closed = false; // unsubscribed, or refused by the broker
    this.deliveries = 0;
    this.offset = null; // history rooms: the last offset received (the `since` of a resubscribe)
    this._seen = new Set(); // recent trigger ids, to drop a trigger delivered twice
    // Page reloads: made here and not answered yet, so a subscription the broker gives back to
    // the same room may become this one; `adopted`: it is one the broker gave back.
    this._adoptable = true;
    this.adopted = false;
    this._held = null; // adopted: deliveries to hand to onData first
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // a refusal is also reported through the promise's users
  }

  /** Stop receiving. Resolves once the broker confirmed (or at once when disconnected). */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }
}

export class CombrokerClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this._WS = this.options.WebSocket || globalThis.WebSocket;
    checkTransports(this.options, this._WS);
    this.transport = null; // "websocket" | "sse": the current connection's, or the attempt's
    // SSE state: the WebSocket just failed to open (`now`), has ever opened (`wsWorked`), the
    // current one opened (`opened`); SSE worked while the WebSocket never did (`sticky`); the
    // last event id read; the deliveries read (dedupe, bounded).
    this._sse = { now: false, wsWorked: false, opened: false, sticky: false, lastEventId: null,
      seen: new Set() };
    this.state = "idle"; // connecting | open | reconnecting | closed
    this.welcome = null; // the last welcome frame
    this.resumeToken = null;
    this.attempt = 0; // consecutive failed attempts since the last welcome
    this.reconnects = 0; // successful re-opens after the first welcome
    this.lastClose = null; // {code, reason} of the last close
    this._listeners = new Map();
    this._nextId = firstRequestId();
    this._pending = new Map(); // requestId -> [entry, ...] in send order (FIFO)
    this._queue = []; // entries waiting for the connection to open
    this._subs = new Map(); // requestId -> Subscription
    this._ws = null;
    this._stopped = false;
    this._everOpened = false;
    this._timers = { reconnect: null, ping: null, open: null };
    this._refusal = null;
    this.ready = new Promise((resolve, reject) => {
      this._readyResolve = resolve;
      this._readyReject = reject;
    });
    this.ready.catch(() => {});
    this._initResume();
  }

  // ------------------------------------------------------------------ events

  /** Listen to an event; returns a function that removes the listener. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }

  _emit(type, ev) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ev);
      } catch (err) {
        if (type !== "error") this._emit("error", err);
        else setTimeout(() => { throw err; });
      }
    }
  }

  // ------------------------------------------------------------------ properties

  get connectionId() { return this.welcome ? this.welcome.connection_id : null; }
  get loginId() { return this.welcome ? this.welcome.login_id : null; }
  get profile() { return this.welcome ? this.welcome.profile : null; }
  get destination() { return this.welcome ? this.welcome.destination : null; }
  get allowedRooms() { return this.welcome ? this.welcome.allowed_rooms : []; }
  get subscriptions() { return [...this._subs.values()]; }
  get isOpen() { return this.state === "open"; }

  // ------------------------------------------------------------------ lifecycle

  /** Open the connection (done by connect()). Returns `ready`: the first welcome. */
  open() {
    if (this.state === "idle") {
      this._stopped = false;
      this._connect();
    }
    return this.ready;
  }

  /** Close for good: no reconnect; pending requests reject with code "closed". */
  close(code = 1000, reason = "") {
    this._stopped = true;
    this._clearTimer("reconnect");
    const ws = this._ws;
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) {
      try { ws.close(code, reason); } catch { ws.close(); }
      // Do not wait for a server that may be gone: settle now, ignore its late close event.
      this._onClose(ws, code, reason || "closed by client");
    } else if (this.state !== "closed") {
      this._finish(new CombrokerError("closed", "closed by client"), { code, reason });
    }
  }

  async _connect() {
    this.state = this._everOpened ? "reconnecting" : "connecting";
    this._refusal = null;
    if (this._pickTransport() === "sse") {
      this._connectSse();
      return;
    }
    let url;
    try {
      const { token, ticket } = await this._credentials();
      if (this._stopped) return;
      url = websocketUrl(this.url, {
        ...(this.options.params || {}),
        token,
        ticket,
        resume_token: this.resumeToken || undefined,
      });
    } catch (err) {
      this._emit("error", err);
      this._scheduleReconnect(1006, "token-unavailable");
      return;
    }
    let ws;
    try {
      ws = this.options.wsOptions === undefined
        ? new this._WS(url, SUBPROTOCOL)
        : new this._WS(url, SUBPROTOCOL, this.options.wsOptions);
    } catch (err) {
      this._emit("error", err);
      this._scheduleReconnect(1006, "connection-failed");
      return;
    }
    this._ws = ws;
    this._watchOpen(ws);
    this._setTimer("open", () => {
      if (this._ws === ws && this.state !== "open") this._drop(ws, "open-timeout");
    }, this.options.openTimeout);
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let frame;
      const text = typeof ev.data === "string" ? ev.data : String(ev.data);
      try {
        frame = JSON.parse(text);
      } catch {
        this._emit("error", new CombrokerError("non-json-message", `not JSON: ${text.slice(0, 80)}`));
        return;
      }
      this._onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._onClose(ws, ev.code, ev.reason);
    };
    ws.onerror = () => {
      if (this._ws === ws && this.state === "open") {
        this._emit("error", new CombrokerError("socket-error", "WebSocket error"));
      }
    };
  }

  // Give up on a socket that hangs (no welcome, no pong): forget it and go on as if it closed.
  _drop(ws, reason) {
    try { ws.close(); } catch { /* already closing */ }
    this._onClose(ws, 1006, reason);
  }

  _onClose(ws, code, reason) {
    if (this._ws !== ws) return;
    if (this._fallBackToSse(ws)) return;
    this._ws = null;
    ws.onmessage = ws.onclose = null;
    ws.onerror = () => {}; // Node's ws throws on an 'error' nobody listens to (close while opening)
    this._clearTimer("open");
    this._clearTimer("ping");
    const wasOpen = this.state === "open";
    code = code || 1006;
    if (this._refusal) reason = this._refusal.reason || reason;
    reason = reason || CLOSE_REASONS[code] || "";
    this.lastClose = { code, reason };
    for (const sub of this._subs.values()) sub.active = false;
    // Requests already on the wire have lost their answer; queued ones wait for the next open.
    const lost = new CombrokerError("disconnected", `connection closed (${code} ${reason})`,
      { closeCode: code, reason });
    for (const [id, entries] of [...this._pending]) {
      const keep = entries.filter((e) => !e.sent);
      for (const e of entries) if (e.sent) this._settle(e, lost);
      if (keep.length) this._pending.set(id, keep); else this._pending.delete(id);
    }
    // A refusal with 4003 is final; auth-unavailable (1011) is worth another try.
    const final = this._stopped || !this.options.reconnect || FINAL_CLOSE_CODES.has(code);
    this._emit("close", { code, reason, wasOpen, willReconnect: !final });
    if (final) {
      const errCode = this._stopped ? "closed" : (this._refusal
        ? (this._refusal.reason || "refused") : (CLOSE_REASONS[code] || "closed"));
      this._finish(new CombrokerError(errCode, `connection closed (${code} ${reason})`,
        { closeCode: code, reason }), null);
    } else {
      this._scheduleReconnect(code, reason);
    }
  }

  _scheduleReconnect(code, reason) {
    this.attempt += 1;
    if (this.attempt > this.options.maxAttempts) {
      this._finish(new CombrokerError("reconnect-failed",
        `gave up after ${this.attempt - 1} attempts`, { closeCode: code, reason }), null);
      return;
    }
    let delay = backoffDelay(this.attempt, this.options);
    if (code === CLOSE_CODES.RATE_LIMITED) delay = Math.max(delay, this.options.rateLimitedDelay);
    this.state = "reconnecting";
    this._emit("reconnecting", { attempt: this.attempt, delay, code, reason });
    this._setTimer("reconnect", () => {
      if (!this._stopped) this._connect();
    }, delay);
  }

  // No more connections: every waiting promise rejects with `err`.
  _finish(err, closeInfo) {
    const wasClosed = this.state === "closed";
    this.state = "closed";
    for (const key of Object.keys(this._timers)) this._clearTimer(key);
    for (const entries of this._pending.values()) for (const e of entries) this._settle(e, err);
    this._pending.clear();
    this._queue = [];
    for (const sub of this._subs.values()) {
      sub.active = false;
      sub._reject(err);
    }
    if (!this._everOpened) this._readyReject(err);
    if (closeInfo && !wasClosed) {
      this.lastClose = { code: closeInfo.code, reason: closeInfo.reason };
      this._emit("close", { ...closeInfo, wasOpen: false, willReconnect: false });
    }
  }

  // ------------------------------------------------------------------ inbound

  _onFrame(frame) {
    this._emit("frame", frame);
    if (frame === null || typeof frame !== "object") return;
    switch (frame.type) {
      case "welcome":
        this._onWelcome(frame);
        return;
      case "refused":
        this._refusal = frame;
        return;
      case "message":
        this._emit("message", frame);
        return;
      case "confirmed":
        this._emit("confirmed", frame);
        return;
      case "resync":
        this._restoreSubscriptions();
        return;
      case "join":
      case "leave":
        if (!("code" in frame)) {
          this._onPresenceEvent(frame);
          return;
        }
        break;
      case "publish":
        if (!("code" in frame)) {
          this._onDelivery(frame);
          return;
        }
        break;
      default:
        break;
    }
    if ("requestId" in frame) {
      const entries = this._pending.get(frame.requestId);
      if (entries && entries.length) {
        const entry = entries.shift();
        if (!entries.length) this._pending.delete(frame.requestId);
        if (frame.code === "error") {
          this._settle(entry, new CombrokerError(frame.message, frame.detail
            ? `${frame.message}: ${frame.detail}` : frame.message,
          { detail: frame.detail, frame, request: entry.frame }));
        } else {
          this._settle(entry, null, frame);
        }
        return;
      }
    }
    if (frame.code === "error") {
      this._emit("error", new CombrokerError(frame.message, frame.message,
        { detail: frame.detail, frame }));
    }
  }

  _onWelcome(frame) {
    this._clearTimer("open");
    const reconnected = this._everOpened;
    const attempts = this.attempt;
    this.welcome = frame;
    this.state = "open";
    this.attempt = 0;
    this._everOpened = true;
    if (frame.resume_token !== undefined && frame.resume_token !== null) {
      this.resumeToken = frame.resume_token;
    }
    if (reconnected) this.reconnects += 1;
    this._resumeWelcomed(frame);
    this._startPing();
    // Subscriptions first (the resumed ones the broker already holds), then queued requests.
    const restoring = frame.resumed === true
      ? this._markResumed(frame)
      : this._restoreSubscriptions();
    const queued = this._queue;
    this._queue = [];
    for (const entry of queued) {
      if (!entry.done) this._transmit(entry);
    }
    this._emit("open", { welcome: frame, reconnected });
    this._readyResolve(this);
    if (reconnected) {
      restoring.then((results) => {
        if (this.welcome !== frame) return;
        this._emit("reconnect", {
          welcome: frame,
          attempts,
          reconnects: this.reconnects,
          restored: results.filter((r) => r.ok).map((r) => r.sub),
          failed: results.filter((r) => !r.ok),
        });
      });
    }
  }

  // The broker restored the subscriptions the welcome lists; any other is sent again.
  _markResumed(frame) {
    const restored = new Set((frame.subscriptions || []).map((s) => JSON.stringify(s.requestId)));
    const subs = [...this._subs.values()];
    return Promise.all(subs.map((sub) => {
      if (restored.has(JSON.stringify(sub.id))) {
        sub.active = true;
        // the broker kept its presence flag; who came and went meanwhile is read again
        if (sub.presence) this._refreshPresence(sub);
        return { ok: true, sub };
      }
      return this._sendSubscribe(sub)
        .then(() => ({ ok: true, sub }), (error) => ({ ok: false, sub, error }));
    }));
  }

  // (Re)send every wanted subscription with its own requestId: the same id with the same room
  // succeeds and changes nothing, so this is safe to repeat.
  _restoreSubscriptions() {
    const subs = [...this._subs.values()];
    return Promise.all(subs.map((sub) => this._sendSubscribe(sub)
      .then(() => ({ ok: true, sub }), (error) => ({ ok: false, sub, error }))));
  }

  _sendSubscribe(sub) {
    const frame = { type: "subscribe", ...subscribeItem(sub) };
    const p = this._request(frame, { timeout: 0, queue: false });
    return p.then((reply) => {
      if (sub.offset === null && typeof reply.offset === "number") sub.offset = reply.offset;
      sub._adoptable = false;
      if (!sub.closed) {
        sub.active = true;
        // Before any later frame is read (this runs as a microtask): join/leave frames that
        // follow are held until the snapshot is in, then applied on top of it.
        if (sub.presence) this._refreshPresence(sub);
        sub._resolve(sub);
      }
      return reply;
    }, (err) => {
      if (err.code === "disconnected" || err.code === "not-open") throw err; // retried on reopen
      if (!sub.closed && this._subs.get(sub.id) === sub) {
        sub.closed = true;
        sub.active = false;
        this._subs.delete(sub.id);
        sub._reject(err);
        err.subscription = sub;
        this._emit("error", err);
      }
      throw err;
    });
  }

  _onDelivery(frame) {
    const sub = this._subs.get(frame.requestId);
    this._emit("publish", frame);
    if (!sub && this._holdUnclaimed(frame)) return;
    if (sub && sub._held) sub._held.push(frame); // adopted, its held ones not handed yet
    else this._deliver(sub, frame);
  }

  _deliver(sub, frame) {
    if (!sub || sub.closed) return;
    if (frame.id !== undefined) {
      if (sub._seen.has(frame.id)) return;
      sub._seen.add(frame.id);
      if (sub._seen.size > 1000) sub._seen.delete(sub._seen.values().next().value);
    }
    if (typeof frame.offset === "number" && sameRoom(frame.room, sub.room)) {
      sub.offset = Math.max(sub.offset || 0, frame.offset);
    }
    sub.deliveries += 1;
    if (typeof sub.onData === "function") {
      try {
        sub.onData(frame.data, frame);
      } catch (err) {
        this._emit("error", err);
      }
    }
  }

  // ------------------------------------------------------------------ page reloads

  get resumeStorageKey() { return this._resumeKey; }

  _initResume() {
    this.resumeTtl = null; // seconds the broker keeps a closed connection's state (welcome)
    this.resumeExpiresAt = null; // ms since the epoch: when the state of the last close expires
    this.unclaimed = new Map(); // requestId (JSON) -> a subscription given back, not yet claimed
    this._resumeStore = resumeStorageOf(this.options.resumeStorage);
    this._resumeKey = resumeStorageKey(this.url);
    this._timers.adopt = null;
    this._resumeOpen = false; // welcomed, not closed since
    const kept = this._resumeStore && this._resumeKey ? readKept(this._resumeStore, this._resumeKey)
      : null;
    if (kept) {
      this.resumeToken = kept.token;
      this.resumeExpiresAt = kept.expiresAt;
    }
    this.on("close", () => this._keepResume(true));
    if (this._resumeStore && typeof globalThis.addEventListener === "function") {
      this._onPageHide = () => this._keepResume(true);
      globalThis.addEventListener("pagehide", this._onPageHide);
    }
  }

  // Keep the token for the next page load: while open, with no expiry (the broker keeps the
  // state from the close); at the close of a welcomed connection (or `pagehide` before it),
  // with when the state expires. Attempts that fail after it change nothing: they save no state.
  _keepResume(closing) {
    if (!this.resumeToken) return;
    let expiresAt = null;
    if (closing) {
      if (!this._resumeOpen) return;
      this._resumeOpen = false;
      if (typeof this.resumeTtl === "number") expiresAt = Date.now() + this.resumeTtl * 1000;
      this.resumeExpiresAt = expiresAt;
    }
    if (!this._resumeStore || !this._resumeKey) return;
    try {
      this._resumeStore.setItem(this._resumeKey,
        JSON.stringify({ token: this.resumeToken, expiresAt }));
    } catch { /* storage full or gone: as without storage */ }
  }

  // A welcome: keep its token; the subscriptions it says the broker holds (`subscriptions` of
  // a resume, `persistent`) that this client does not know by their request id are adopted by
  // a subscribe to their room made before the welcome, else held until one is made.
  _resumeWelcomed(frame) {
    this.resumeTtl = typeof frame.resume_ttl === "number" ? frame.resume_ttl : null;
    this.resumeExpiresAt = null;
    this._resumeOpen = true; // a state is saved when this connection closes
    this._keepResume(false);
    const held = [];
    if (frame.resumed === true) {
      for (const s of frame.subscriptions || []) held.push({ ...s, persistent: false });
    }
    for (const s of frame.persistent || []) held.push({ ...s, persistent: true });
    const before = this.unclaimed;
    this.unclaimed = new Map();
    for (const entry of held) {
      if (!entry || entry.requestId === undefined || entry.refused !== undefined
        || this._subs.has(entry.requestId)) continue; // known, or not held (refused)
      const key = JSON.stringify(entry.requestId);
      const known = this.unclaimed.get(key); // resumed, and persistent too
      if (known) {
        known.persistent = known.persistent || entry.persistent;
        continue;
      }
      const old = before.get(key);
      before.delete(key);
      const waiting = [...this._subs.values()].find((sub) => sub._adoptable && !sub.closed
        && sameRoom(sub.room, entry.room) && sub.presence === (entry.presence === true)
        && sameJson(sub.filter, entry.filter === undefined ? null : entry.filter));
      if (waiting) {
        this._subs.delete(waiting.id);
        waiting.id = entry.requestId;
        this._subs.set(waiting.id, waiting);
        this._claimed(waiting, entry, true);
        for (const f of old ? old.held : []) this._deliver(waiting, f);
        continue;
      }
      this.unclaimed.set(key, { requestId: entry.requestId, room: entry.room,
        presence: entry.presence === true, persistent: entry.persistent,
        filter: entry.filter === undefined ? null : entry.filter,
        offset: typeof entry.offset === "number" ? entry.offset : null,
        held: old ? old.held : [] });
    }
    for (const gone of before.values()) {  // the broker no longer holds them
      this._emit("unclaimed", { requestId: gone.requestId, room: gone.room,
        persistent: gone.persistent, reason: "not-resumed", dropped: gone.held.length });
    }
    this._clearTimer("adopt");
    if (this.unclaimed.size) {
      this._setTimer("adopt", () => this._releaseUnclaimed("timeout"), this.options.adoptTimeout);
    }
  }

  // subscribe(): a subscription the broker gave back to the same room and options is this one.
  _adopt(room, onData, options) {
    if (!this.unclaimed.size) return null;
    const presence = options.presence === true;
    const filter = options.filter === undefined ? null : options.filter;
    const entry = [...this.unclaimed.values()].find((e) => sameRoom(e.room, room)
      && e.presence === presence && sameJson(e.filter, filter));
    if (!entry) return null;
    this.unclaimed.delete(JSON.stringify(entry.requestId));
    const sub = new Subscription(this, entry.requestId, room, onData, options);
    this._subs.set(sub.id, sub);
    this._claimed(sub, entry);
    // What it missed, handed to onData once subscribe() has returned (the handler may name the
    // subscription), in order, before any later delivery.
    sub._held = entry.held;
    entry.held = [];
    queueMicrotask(() => {
      const held = sub._held || [];
      for (let i = 0; i < held.length; i += 1) this._deliver(sub, held[i]);
      sub._held = null;
    });
    return sub;
  }

  // `welcoming`: the welcome's own restore (_markResumed, _restoreSubscriptions) follows, and
  // asks for the presence snapshot.
  _claimed(sub, entry, welcoming = false) {
    sub._adoptable = false;
    sub.adopted = true;
    sub.active = this.state === "open";
    if (typeof entry.offset === "number") sub.offset = Math.max(sub.offset || 0, entry.offset);
    if (sub.presence && !welcoming && sub.active) this._refreshPresence(sub);
    sub._resolve(sub);
    this._emit("adopted", { subscription: sub, persistent: entry.persistent === true });
  }

  // A delivery to a subscription given back and not claimed yet: held (within the bound).
  _holdUnclaimed(frame) {
    const entry = this.unclaimed.get(JSON.stringify(frame.requestId));
    if (!entry) return false;
    entry.held.push(frame);
    if (entry.held.length > this.options.adoptMaxHeld) this._release(entry, "overflow");
    return true;
  }

  _releaseUnclaimed(reason) {
    for (const entry of [...this.unclaimed.values()]) this._release(entry, reason);
  }

  // Not claimed: forgotten here, and unsubscribed on the broker (a persistent one is kept
  // there: only an explicit unsubscribe ends it).
  _release(entry, reason) {
    this.unclaimed.delete(JSON.stringify(entry.requestId));
    const dropped = entry.held.length;
    entry.held = [];
    if (!entry.persistent && this.state === "open") {
      this._request({ type: "unsubscribe", requestId: entry.requestId }, { queue: false })
        .catch(() => {});
    }
    this._emit("unclaimed", { requestId: entry.requestId, room: entry.room,
      persistent: entry.persistent, reason, dropped });
  }

  _newId() {
    let id = this._nextId++;
    while (this._subs.has(id) || this.unclaimed.has(JSON.stringify(id))) id = this._nextId++;
    return id;
  }

  // ------------------------------------------------------------------ presence

  _onPresenceEvent(frame) {
    this._emit(frame.type, frame);
    const sub = this._subs.get(frame.requestId);
    if (!sub || sub.closed || !sub.presence) return;
    if (sub._presenceBuffer) sub._presenceBuffer.push(frame);
    else this._applyPresenceEvent(sub, frame);
  }

  // Joins and leaves are set operations, so applying one the snapshot already reflects changes
  // nothing: holding them until the snapshot is in and applying them after it is right
  // whichever was read first.
  _applyPresenceEvent(sub, frame) {
    const member = frame.member;
    if (!member || typeof member !== "object") return;
    const key = memberKey(member);
    if (frame.type === "join") {
      if (!sub.members.has(key)) sub.members.set(key, { ...member, connections: 1 });
    } else {
      sub.members.delete(key);
    }
    const fn = frame.type === "join" ? sub.onJoin : sub.onLeave;
    if (typeof fn === "function") {
      try {
        fn(member, frame);
      } catch (err) {
        this._emit("error", err);
      }
    }
  }

  // Ask for the room's members (after a subscribe, a re-subscribe or a resume): the snapshot
  // replaces `sub.members`, then the join/leave frames held meanwhile are applied.
  _refreshPresence(sub) {
    const gen = ++sub._presenceGen;
    if (!sub._presenceBuffer) sub._presenceBuffer = [];
    const release = () => {
      const held = sub._presenceBuffer || [];
      sub._presenceBuffer = null;
      for (const frame of held) this._applyPresenceEvent(sub, frame);
    };
    this._request({ type: "presence", room: sub.room }, { queue: false }).then((reply) => {
      if (sub._presenceGen !== gen || sub.closed) return;
      sub.members = new Map((reply.members || []).map((m) => [memberKey(m), m]));
      sub.anonymous = reply.anonymous || 0;
      if (typeof sub.onPresence === "function") {
        try {
          sub.onPresence([...sub.members.values()], reply);
        } catch (err) {
          this._emit("error", err);
        }
      }
      release();
    }, (err) => {
      if (sub._presenceGen !== gen || sub.closed) return;
      release(); // best effort; the next (re)subscribe asks again
      if (!["disconnected", "not-open", "closed"].includes(err.code)) {
        err.subscription = sub;
        this._emit("error", err);
      }
    });
  }

  // ------------------------------------------------------------------ requests

  _request(frame, { timeout = this.options.requestTimeout, queue = true } = {}) {
    if (frame.requestId === undefined) frame.requestId = this._newId();
    return new Promise((resolve, reject) => {
      const entry = { frame, resolve, reject, sent: false, done: false, timer: null };
      if (this.state === "closed" || this._stopped) {
        reject(new CombrokerError("closed", "the client is closed"));
        return;
      }
      if (this.state !== "open" && !queue) {
        reject(new CombrokerError("not-open", "not connected"));
        return;
      }
      const unsupported = this._unsupported(frame);
      if (unsupported) {
        reject(unsupported);
        return;
      }
      const id = frame.requestId;
      if (!this._pending.has(id)) this._pending.set(id, []);
      this._pending.get(id).push(entry);
      if (timeout > 0) {
        entry.timer = setTimeout(() => {
          this._withdraw(entry);
          this._settle(entry, new CombrokerError("timeout",
            `no reply to ${frame.type} within ${timeout} ms`, { request: frame }));
        }, timeout);
      }
      if (this.state === "open") this._transmit(entry);
      else this._queue.push(entry);
    });
  }

  _transmit(entry) {
    const ws = this._ws;
    if (!ws) return;
    if (ws instanceof SseConnection) {
      this._sseTransmit(ws, entry);
      return;
    }
    try {
      ws.send(JSON.stringify(entry.frame));
      entry.sent = true;
    } catch (err) {
      this._emit("error", err);
    }
  }

  // Forget a request that will get no reply (its timeout, or refused before it is sent).
  _withdraw(entry) {
    const id = entry.frame.requestId;
    const entries = this._pending.get(id);
    if (!entries) return;
    const i = entries.indexOf(entry);
    if (i >= 0) entries.splice(i, 1);
    if (!entries.length) this._pending.delete(id);
  }

  _settle(entry, err, value) {
    if (entry.done) return;
    entry.done = true;
    if (entry.timer) clearTimeout(entry.timer);
    if (err) entry.reject(err);
    else entry.resolve(value);
  }

  /**
   * Subscribe to a room. `onData(data, frame)` gets every delivery. Returns a Subscription at
   * once: `await sub.ready` for the broker's answer, `sub.unsubscribe()` to end it. Made while
   * disconnected, it is sent when the connection opens, and restored after every reconnect.
   *
   * Options: `presence: true` also tells who holds a subscription to the room: `sub.members`
   * (memberKey -> {login, profile, realm?, connections}) is filled from a `presence` query
   * after every (re)subscribe or resume, `onPresence(members, reply)` is called then, and
   * `onJoin(member, frame)` / `onLeave(member, frame)` for every join/leave frame after it
   * (this client's own join included). A room with presence off refuses the subscription with
   * `presence-not-enabled`.
   */
  subscribe(room, onData, options = {}) {
    if (this.state === "closed" || this._stopped) {
      const sub = new Subscription(this, null, room, onData, options);
      sub.closed = true;
      sub._reject(new CombrokerError("closed", "the client is closed"));
      return sub;
    }
    const adopted = this._adopt(room, onData, options);
    if (adopted) return adopted;
    const sub = new Subscription(this, this._newId(), room, onData, options);
    this._subs.set(sub.id, sub);
    if (this.state === "open") this._sendSubscribe(sub).catch(() => {});
    return sub;
  }

  async _unsubscribe(sub) {
    if (sub.closed) return;
    sub.closed = true;
    sub._presenceBuffer = null;
    const wasActive = sub.active;
    sub.active = false;
    this._subs.delete(sub.id);
    if (this.state !== "open") return; // the broker forgot it with the connection
    try {
      await this._request({ type: "unsubscribe", requestId: sub.id }, { queue: false });
    } catch (err) {
      if (err.code === "not-subscribed" || err.code === "disconnected") return;
      if (!wasActive && err.code === "no-request-id") return;
      throw err;
    }
  }

  /**
   * Send `data` to a client, e.g. "/agent/bob". Resolves with the reply ({code, id}).
   * `{ ack: true }`: kept until the recipient confirms (it may be offline); a "confirmed"
   * event with this id follows.
   */
  send(destination, data, { ack = false } = {}) {
    const frame = { type: "send", to: destination, data };
    if (ack) frame.ack = true;
    return this._request(frame);
  }

  /** Confirm an acknowledged message (a "message" event with `ack: true`) by its id. */
  confirm(id) {
    return this._request({ type: "confirm", id });
  }

  /**
   * Publish `data` to rooms (a room or a list of rooms). Resolves with {code, id}.
   * `{ history: true }` records it in the rooms' history.
   */
  publish(rooms, data, { history = false, tags } = {}) {
    const frame = { type: "publish", rooms: Array.isArray(rooms) ? rooms : [rooms], data };
    if (history) frame.history = true;
    if (tags !== undefined) frame.tags = tags;
    return this._request(frame);
  }

  /** A history room's recorded triggers: {type:"history", offset, messages, recovered?}. */
  history(room, { limit, since } = {}) {
    const frame = { type: "history", room };
    if (limit !== undefined) frame.limit = limit;
    if (since !== undefined) frame.since = since;
    return this._request(frame);
  }

  /**
   * Who holds a subscription to `room` (one may subscribe to it): resolves with
   * {type:"presence", room, members:[{login, profile, realm?, connections}], anonymous}.
   * Rejects with `room-not-found` or `presence-not-enabled`.
   */
  presence(room) {
    return this._request({ type: "presence", room });
  }

  /** The counts only: {type:"presence_stats", room, members, connections}. */
  presenceStats(room) {
    return this._request({ type: "presence_stats", room });
  }

  /** An admin action (`connections`, `kick`, `stats`, `presence`); resolves with the reply. */
  admin(action, args = {}) {
    return this._request({ ...args, type: "admin", action });
  }

  /** {"type":"status"}: open_connections, num_rooms, online_since. */
  status() {
    return this._request({ type: "status" });
  }

  /** A ping; resolves with the round trip in ms. */
  async ping(timeout = this.options.pingTimeout) {
    const t0 = Date.now();
    await this._request({ type: "ping" }, { timeout, queue: false });
    return Date.now() - t0;
  }

  _startPing() {
    this._clearTimer("ping");
    if (this._ws instanceof SseConnection) return; // the server's heart-beats keep SSE alive
    const every = this.options.pingInterval;
    if (!(every > 0)) return;
    const ws = this._ws;
    this._timers.ping = setInterval(() => {
      if (this._ws !== ws || this.state !== "open") return;
      this.ping().catch((err) => {
        if (err.code === "timeout" && this._ws === ws) this._drop(ws, "ping-timeout");
      });
    }, every);
  }

  _setTimer(name, fn, ms) {
    this._clearTimer(name);
    if (ms > 0) this._timers[name] = setTimeout(() => {
      this._timers[name] = null;
      fn();
    }, ms);
  }

  _clearTimer(name) {
    const t = this._timers[name];
    if (t !== null && t !== undefined) {
      clearTimeout(t);
      clearInterval(t);
    }
    this._timers[name] = null;
  }

  // ------------------------------------------------------------------ transports (issue 15)

  // The transport of the attempt about to start, set (with a `transport` event when it changes).
  // "auto": the WebSocket, unless it just failed to open (this attempt goes on over SSE at once)
  // or SSE worked on this client while the WebSocket never opened (the path blocks WebSockets:
  // trying again would cost every reconnect a failure first, up to openTimeout).
  _pickTransport() {
    const now = this._sse.now;
    this._sse.now = false;
    let transport = this.options.transport;
    let reason = "option";
    if (transport === "auto") {
      if (now) [transport, reason] = ["sse", "websocket-failed"];
      else if (this._sse.sticky) [transport, reason] = ["sse", "sse-worked"];
      else if (typeof this._WS !== "function") [transport, reason] = ["sse", "no-websocket"];
      else [transport, reason] = ["websocket", "default"];
    }
    if (this.transport !== transport) {
      const previous = this.transport;
      this.transport = transport;
      this._emit("transport", { transport, previous, reason });
    }
    return transport;
  }

  _watchOpen(ws) {
    this._sse.opened = false;
    ws.onopen = () => {
      if (this._ws !== ws) return;
      this._sse.opened = true;
      this._sse.wsWorked = true;
    };
  }

  // A WebSocket that closed (or timed out) before it opened, with transport "auto": the same
  // attempt goes on over SSE at once. False when the close is to be handled as a close.
  _fallBackToSse(ws) {
    if (ws instanceof SseConnection || this._sse.opened || this._stopped) return false;
    if (this.options.transport !== "auto" || !eventSourceClass(this.options)) return false;
    this._ws = null;
    ws.onmessage = ws.onclose = ws.onopen = null;
    ws.onerror = () => {};
    try { ws.close(); } catch { /* already closed */ }
    this._clearTimer("open");
    this._sse.now = true;
    this._connect();
    return true;
  }

  async _connectSse() {
    const items = this._sseItems();
    const lastEventId = this._sse.lastEventId;
    let url;
    try {
      url = await this._sseStreamUrl(items, lastEventId);
    } catch (err) {
      this._emit("error", err);
      this._scheduleReconnect(1006, "token-unavailable");
      return;
    }
    if (this._stopped) return;
    const conn = new SseConnection(this, eventSourceClass(this.options));
    try {
      conn.start(url, items, lastEventId);
    } catch (err) {
      this._emit("error", err);
      this._scheduleReconnect(1006, "connection-failed");
      return;
    }
    this._ws = conn;
    this._setTimer("open", () => {
      if (this._ws === conn && this.state !== "open") this._drop(conn, "open-timeout");
    }, this.options.openTimeout);
    conn.onframe = (frame) => {
      if (this._ws === conn) this._onFrame(frame);
    };
    conn.onclose = (ev) => {
      if (this._ws === conn) this._onClose(conn, ev.code, ev.reason);
    };
  }

  // The credentials of one connect: `token`, and `ticket` (a function gives a fresh one each
  // time: a ticket opens one connection only).
  async _credentials() {
    let { token, ticket } = this.options;
    if (typeof token === "function") token = await token();
    if (typeof ticket === "function") ticket = await ticket();
    return { token, ticket };
  }

  // The subscriptions an SSE stream opens with: every one wanted, as a subscribe frame's fields.
  _sseItems() {
    return [...this._subs.values()].map(subscribeItem);
  }

  async _sseStreamUrl(items, lastEventId) {
    const { token, ticket } = await this._credentials();
    return sseUrl(this.url, {
      ...(this.options.params || {}),
      token,
      ticket,
      subscribe: JSON.stringify(items),
      lastEventId: lastEventId || undefined,
    }, this.options.sseUrl);
  }

  // The cookie is the credential unless a token or ticket is in the URL: then no credentials
  // (a cross-origin broker need not allow them).
  _sseWithCredentials(url) {
    if (typeof this.options.withCredentials === "boolean") return this.options.withCredentials;
    const q = new URL(url).searchParams;
    return !q.has("token") && !q.has("ticket");
  }

  // The first welcome of an SSE connection.
  _sseWelcomed() {
    if (!this._sse.wsWorked && this.options.transport === "auto") this._sse.sticky = true;
  }

  // Over SSE (this connection's, or surely the next one's) only subscribe and unsubscribe can
  // be carried: anything else is refused with `unsupported-transport`, never dropped.
  _unsupported(frame) {
    if (SSE_REQUESTS.has(frame.type)) return null;
    const sse = this._ws instanceof SseConnection
      || (!this._ws && (this.options.transport === "sse" || this._sse.sticky));
    if (!sse) return null;
    return new CombrokerError("unsupported-transport",
      `${frame.type} needs the WebSocket: over SSE the client only receives`,
      { request: frame, transport: "sse" });
  }

  _sseTransmit(conn, entry) {
    const type = entry.frame.type;
    if (type === "subscribe") {
      entry.sent = true;
      conn.subscribed(entry.frame.requestId);
    } else if (type === "unsubscribe") {
      entry.sent = true;
      conn.unsubscribed(entry);
    } else {
      this._withdraw(entry); // a request queued while the transport was not known yet
      this._settle(entry, this._unsupported(entry.frame));
    }
  }

  // An unsubscribe carried out: the current stream no longer holds the subscription.
  _sseUnsubscribed(entry) {
    this._withdraw(entry);
    this._settle(entry, null, { code: "success", requestId: entry.frame.requestId });
  }

  // A reopened stream refused a subscription the previous one held (its permission went).
  _sseRefused(frame) {
    const sub = this._subs.get(frame.requestId);
    if (!sub) return;
    const err = new CombrokerError(frame.message, frame.message,
      { detail: frame.detail, frame, subscription: sub });
    sub.closed = true;
    sub.active = false;
    this._subs.delete(sub.id);
    sub._reject(err);
    this._emit("error", err);
  }
}

// Request ids start at a random number (then count), so ids of two page loads do not meet:
// a reloaded page is given back its predecessor's subscriptions under their request ids.
function firstRequestId() {
  return 1 + Math.floor(Math.random() * 2 ** 40);
}

/**
 * The Storage the resume token is kept in: `option` if given (null: none), else
 * sessionStorage if it works here (it throws where storage is disabled, in sandboxed frames,
 * and in some private modes).
 */
export function resumeStorageOf(option) {
  if (option === null) return null;
  let store = option;
  try {
    if (store === undefined) store = globalThis.sessionStorage;
    if (!store || typeof store.getItem !== "function") return null;
    store.setItem("combroker.probe", "1");
    store.removeItem("combroker.probe");
    return store;
  } catch {
    return null;
  }
}

/** The key the resume token of the broker at `url` is kept under (one per broker URL). */
export function resumeStorageKey(url) {
  try {
    const u = new URL(websocketUrl(url));
    return `combroker.resume:${u.host}${u.pathname}`;
  } catch {
    return null;
  }
}

// The kept token, unless its state has expired (then it is removed).
function readKept(store, key) {
  try {
    const kept = JSON.parse(store.getItem(key) || "null");
    if (!kept || typeof kept.token !== "string") return null;
    const expiresAt = typeof kept.expiresAt === "number" ? kept.expiresAt : null;
    if (expiresAt !== null && expiresAt <= Date.now()) {
      store.removeItem(key);
      return null;
    }
    return { token: kept.token, expiresAt };
  } catch {
    return null;
  }
}

// Rooms compare by keys and values, whatever the key order.
function sameRoom(a, b) {
  if (!a || !b) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

// Two JSON values are the same value (objects whatever their key order): two filters.
function sameJson(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length
    && keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && sameJson(a[k], b[k]));
}

// ------------------------------------------------------------------ SSE (issue 15)

// What a client may ask over SSE: the stream only receives, its subscriptions are given when it
// opens, so subscribe and unsubscribe reopen it.
const SSE_REQUESTS = new Set(["subscribe", "unsubscribe"]);
// Deliveries read (type, requestId, id), remembered to read each once: two streams overlap
// while one is reopened, and a stream opened with a last event id replays. Oldest forgotten first.
const SSE_SEEN_MAX = 5000;

// A subscription as a subscribe frame's fields (the `subscribe` request; an SSE stream's list).
function subscribeItem(sub) {
  const item = { room: sub.room, requestId: sub.id };
  if (typeof sub.offset === "number") item.since = sub.offset; // replay what was missed
  if (sub.presence) item.presence = true;
  if (sub.filter !== null) item.filter = sub.filter;
  if (sub.persistent) item.persistent = true;
  return item;
}

function eventSourceClass(options) {
  const ES = options.EventSource || globalThis.EventSource;
  return typeof ES === "function" ? ES : null;
}

// Throws when the options leave the client no transport.
function checkTransports(options, WS) {
  const t = options.transport;
  if (!["auto", "websocket", "sse"].includes(t)) {
    throw new CombrokerError("invalid-transport",
      `transport must be "auto", "websocket" or "sse", not ${JSON.stringify(t)}`);
  }
  const sse = eventSourceClass(options) !== null;
  if (t === "sse" && !sse) {
    throw new CombrokerError("no-eventsource",
      "no EventSource implementation: pass one as options.EventSource");
  }
  if (typeof WS !== "function" && (t === "websocket" || (t === "auto" && !sse))) {
    throw new CombrokerError("no-websocket",
      "no WebSocket implementation: pass one as options.WebSocket");
  }
}

const streamKey = (requestId) => JSON.stringify(requestId);

/**
 * One SSE connection of a client: the EventSource it reads, and while a reopen overlaps it, the
 * next one. It stands where a WebSocket stands for the client (`readyState`, `close()`), hands
 * it each frame (`onframe`) and its end (`onclose({code, reason})`; never called by `close()`).
 *
 * - Opening: `GET sseUrl?subscribe=[...]&lastEventId=...` with the subscriptions the client
 *   wants and the last event id read (history rooms resume where they were).
 * - A subscribe or an unsubscribe reopens (all of one microtask batch in one reopen): the next
 *   stream opens with the new list and the last event id while the current one still delivers;
 *   once the next one is welcomed and answered every subscription in its list, it becomes the
 *   current one and the old one is closed. A delivery read on both is read once (by its
 *   (type, requestId, id)). The subscribe promise settles with the next stream's reply; an
 *   unsubscribe resolves when a stream without it is current. A change during a reopen waits
 *   for it, then reopens once more.
 * - Its end, as a WebSocket close with the same code: `event: close` {code, reason} (4003,
 *   4008, 4010, ... as the WebSocket path treats them); an EventSource error: a network error
 *   is 1006 "connection-lost" (the client reopens with its own backoff, not EventSource's); an
 *   HTTP error answering the first stream is asked about once (`_httpRefusal`: a refused login
 *   is final as over WebSocket, a 503 is retried); a next stream that fails or is not complete
 *   within openTimeout is 1006 (the client reconnects without overlap, which also serves
 *   BROKER_DUPLICATE_LOGIN=reject).
 *   A 4009 on the old stream while the next one opens is the next one replacing it
 *   (BROKER_DUPLICATE_LOGIN=replace): the next one takes over.
 */
class SseConnection {
  constructor(client, EventSourceClass) {
    this.client = client;
    this.EventSource = EventSourceClass;
    this.readyState = 0; // as a WebSocket's: 0 opening, 1 welcomed, 3 closed
    this.onframe = null;
    this.onclose = null;
    this.current = null; // the stream the client reads
    this.next = null; // a stream opened with a newer list, overlapping the current one
    this._reopening = false; // from a reopen's start to its end
    this._again = false; // a change came during a reopen
    this._scheduled = false;
    this._unsubscribes = []; // unsubscribe requests waiting for a stream without them
    this._timer = null;
  }

  start(url, items, lastEventId) {
    this.current = this._open(url, items, lastEventId);
  }

  _open(url, items, lastEventId) {
    const es = new this.EventSource(url, { withCredentials: this.client._sseWithCredentials(url) });
    const stream = {
      es,
      url,
      ids: new Set(items.map((item) => streamKey(item.requestId))), // its subscriptions
      replied: new Set(), // those it answered
      welcomed: false,
      lastEventId: lastEventId || null, // the last one it read, or the one it opened with
    };
    es.onmessage = (ev) => this._message(stream, ev);
    es.onerror = () => this._error(stream);
    es.addEventListener("close", (ev) => this._closeEvent(stream, ev));
    return stream;
  }

  _live(stream) {
    return this.readyState !== 3 && (stream === this.current || stream === this.next);
  }

  _message(stream, ev) {
    if (!this._live(stream)) return;
    if (ev.lastEventId) {
      stream.lastEventId = ev.lastEventId;
      if (stream === this.current) this.client._sse.lastEventId = ev.lastEventId;
    }
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      this.client._emit("error", new CombrokerError("non-json-message",
        `not JSON: ${String(ev.data).slice(0, 80)}`));
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "welcome") {
      this._welcome(stream, frame);
      return;
    }
    if (this._seenBefore(frame)) return;
    const isReply = "code" in frame && "requestId" in frame;
    if (isReply && stream.ids.has(streamKey(frame.requestId))) {
      stream.replied.add(streamKey(frame.requestId));
      if (stream === this.next) {
        this._nextReply(frame);
        this._promoteIfComplete();
        return;
      }
    }
    this.onframe(frame);
  }

  _welcome(stream, frame) {
    stream.welcomed = true;
    if (stream === this.next) {
      this.client.welcome = frame; // the connection the client now holds
      this.client._emit("frame", frame);
      this._promoteIfComplete();
      return;
    }
    this.readyState = 1;
    this.client._sseWelcomed();
    this.onframe(frame);
  }

  // A reply in the next stream: a new subscription's goes to its request; a refusal of one the
  // current stream held ends it; an acceptance of one the current stream held changes nothing.
  _nextReply(frame) {
    const entries = this.client._pending.get(frame.requestId);
    if (entries && entries.length && entries[0].frame.type === "subscribe") this.onframe(frame);
    else if (frame.code === "error") this.client._sseRefused(frame);
  }

  _seenBefore(frame) {
    if ("code" in frame || frame.id === undefined) return false;
    const key = JSON.stringify([frame.type, frame.requestId ?? null, frame.id]);
    const seen = this.client._sse.seen;
    if (seen.has(key)) return true;
    seen.add(key);
    if (seen.size > SSE_SEEN_MAX) seen.delete(seen.values().next().value);
    return false;
  }

  /** The client sent a subscribe: reopen, unless a stream's list has it and its reply is due. */
  subscribed(requestId) {
    const key = streamKey(requestId);
    const due = (s) => s !== null && s.ids.has(key) && !s.replied.has(key);
    if (!due(this.current) && !due(this.next)) this._schedule();
  }

  /** The client sent an unsubscribe (it already forgot the subscription): reopen. */
  unsubscribed(entry) {
    this._unsubscribes.push(entry);
    this._schedule();
  }

  _schedule() {
    if (this._scheduled || this.readyState === 3) return;
    this._scheduled = true;
    queueMicrotask(() => {
      this._scheduled = false;
      this._reopen();
    });
  }

  async _reopen() {
    if (this.readyState === 3) return;
    if (this._reopening) {
      this._again = true;
      return;
    }
    this._reopening = true;
    const items = this.client._sseItems();
    const lastEventId = this.current.lastEventId;
    let url;
    try {
      url = await this.client._sseStreamUrl(items, lastEventId);
    } catch (err) {
      this.client._emit("error", err);
      this._end(1006, "token-unavailable");
      return;
    }
    if (this.readyState === 3) return;
    try {
      this.next = this._open(url, items, lastEventId);
    } catch (err) {
      this.client._emit("error", err);
      this._end(1006, "connection-failed");
      return;
    }
    const ms = this.client.options.openTimeout;
    if (ms > 0) this._timer = setTimeout(() => this._end(1006, "open-timeout"), ms);
  }

  _promoteIfComplete() {
    const next = this.next;
    if (!next || !next.welcomed) return;
    for (const key of next.ids) if (!next.replied.has(key)) return;
    clearTimeout(this._timer);
    this._timer = null;
    const old = this.current;
    this.current = next;
    this.next = null;
    old.es.close();
    if (next.lastEventId) this.client._sse.lastEventId = next.lastEventId;
    this._reopening = false;
    const waiting = this._unsubscribes;
    this._unsubscribes = [];
    for (const entry of waiting) {
      if (next.ids.has(streamKey(entry.frame.requestId))) this._unsubscribes.push(entry);
      else this.client._sseUnsubscribed(entry);
    }
    if (this._again) {
      this._again = false;
      this._schedule();
    }
  }

  _error(stream) {
    if (!this._live(stream)) return;
    // CONNECTING: the network failed; EventSource would retry by itself, the client does.
    // CLOSED: the server answered with an HTTP error, and EventSource does not say which.
    if (stream.es.readyState !== 2) {
      this._end(1006, "connection-lost");
    } else if (stream !== this.current || this.readyState !== 0) {
      this._end(1006, "sse-refused");
    } else {
      stream.es.close();
      this._httpRefusal(stream.url).then(([code, reason]) => this._end(code, reason));
    }
  }

  // Why the first stream was refused: the same request once more with fetch, for its status
  // and body (the refused frame or the error). 400, 403, 413 are final (as a 4003 with the
  // body's reason: retrying the same request cannot help); 503 and the rest are retried; an
  // `invalid-last-event-id` is retried without it, a `duplicate-login` as it is (under
  // BROKER_DUPLICATE_LOGIN=reject the login's previous stream, closed by a failed reopen, may
  // not be gone yet). Not asked with a single-use ticket.
  async _httpRefusal(url) {
    const fetcher = this.client.options.fetch || globalThis.fetch;
    if (typeof fetcher !== "function" || new URL(url).searchParams.has("ticket")) {
      return [1006, "sse-refused"];
    }
    const abort = new AbortController();
    let status;
    let body = null;
    try {
      const credentials = this.client._sseWithCredentials(url) ? "include" : "same-origin";
      const r = await fetcher(url, { credentials, cache: "no-store", signal: abort.signal,
        headers: { accept: "text/event-stream" } });
      status = r.status;
      if (status !== 200) body = await r.json();
    } catch { /* unreachable, or not JSON */ } finally {
      abort.abort();
    }
    if (this.readyState === 3) return [1006, "sse-refused"];
    if (body !== null && typeof body === "object" && typeof body.type === "string") {
      this.onframe(body); // a refused frame (its reason), or an error (an error event)
    }
    const reason = (body && (body.reason || body.message)) || (status ? `http-${status}` : "sse-refused");
    if (reason === "invalid-last-event-id") this.client._sse.lastEventId = null;
    else if (reason !== "duplicate-login" && [400, 403, 413].includes(status)) {
      return [CLOSE_CODES.REFUSED, reason];
    }
    return [1006, reason];
  }

  _closeEvent(stream, ev) {
    if (!this._live(stream)) return;
    let info = {};
    try {
      info = JSON.parse(ev.data) || {};
    } catch { /* a close without a JSON body: code 1006 */ }
    const code = Number.isInteger(info.code) ? info.code : 1006;
    const reason = typeof info.reason === "string" ? info.reason : "";
    if (stream === this.current && this.next !== null && code === CLOSE_CODES.REPLACED) {
      stream.es.close(); // replaced by the next stream: that one takes over when complete
      return;
    }
    this._end(code, reason);
  }

  _end(code, reason) {
    if (this.readyState === 3) return;
    this.close();
    if (this.onclose) this.onclose({ code, reason });
  }

  close() {
    this.readyState = 3;
    clearTimeout(this._timer);
    for (const stream of [this.current, this.next]) if (stream) stream.es.close();
  }
}

/** Make a client without connecting it yet (call `client.open()`). */
export function createClient(url, options = {}) {
  return new CombrokerClient(url, options);
}

/**
 * Connect and resolve with the client once the broker welcomed it. Transient failures are
 * retried with backoff; a refusal (4003), a final close or `client.close()` rejects.
 */
export function connect(url, options = {}) {
  const client = new CombrokerClient(url, options);
  return client.open();
}

export default { connect, createClient, CombrokerClient, CombrokerError, Subscription,
  backoffDelay, memberKey, websocketUrl, resumeStorageOf, resumeStorageKey, sseUrl, SUBPROTOCOL,
  CLOSE_CODES, CLOSE_REASONS, DEFAULTS };
