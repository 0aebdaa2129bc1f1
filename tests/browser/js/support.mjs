// What the Node tests of combroker.js (tests/browser/js/*.test.mjs) share: waiting on something
// observable, and scripted stand-ins for WebSocket and EventSource. Each test file runs in a
// process of its own (node --test), so the static settings of FakeWS and FakeEventSource are
// that file's.

// Generous: the machine running this may be loaded.
export const WAIT = 15000;

export const uid = () => Math.random().toString(36).slice(2, 10);

export const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

// Resolves with predicate()'s first truthy value, polled every 10 ms; rejects after `timeout`.
export function waitFor(predicate, what, timeout = WAIT) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = () => {
      let value;
      try { value = predicate(); } catch (err) { reject(err); return; }
      if (value) { resolve(value); return; }
      if (Date.now() - t0 > timeout) { reject(new Error(`timed out waiting for ${what}`)); return; }
      setTimeout(poll, 10);
    };
    poll();
  });
}

// The client's next `type` event.
export function nextEvent(client, type, timeout = WAIT) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} event`)); }, timeout);
    const off = client.once(type, (ev) => { clearTimeout(timer); resolve(ev); });
  });
}

// A scripted stand-in for WebSocket: `FakeWS.server(ws)` decides what each socket does;
// `FakeWS.answer(ws, frame)` may answer each frame the client sends (and `ws.onsend(frame)`
// watch it); `FakeWS.welcomed` are the welcome's fields a test file's client expects.
export class FakeWS {
  static instances = [];
  static server = () => {};
  static answer = () => {};
  static welcomed = {};
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeWS.instances.push(this);
    setTimeout(() => FakeWS.server(this), 0);
  }
  send(text) {
    const frame = JSON.parse(text);
    this.sent.push(frame);
    if (this.onsend) this.onsend(frame);
    FakeWS.answer(this, frame);
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
  }
  serverSend(frame) { this.onmessage && this.onmessage({ data: JSON.stringify(frame) }); }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  // The handshake succeeded (the WebSocket's open event).
  accept() {
    if (this.readyState !== 0) return;
    this.readyState = 1;
    if (this.onopen) this.onopen({});
  }
  welcome(extra = {}) {
    this.accept();
    const n = FakeWS.instances.length;
    this.serverSend({ type: "welcome", is_authorized: true, allowed_rooms: [],
      connection_id: `c${n}`, login_id: "x", profile: "agent", destination: "/agent/x",
      resume_token: `rt-${n}`, ...FakeWS.welcomed, ...extra });
  }
  last(type) { return [...this.sent].reverse().find((f) => f.type === type); }
}

// A scripted stand-in for EventSource (SSE): `FakeEventSource.server(es)` decides what each
// stream does. `es.items` is the subscription list it was opened with, `es.query` its URL's
// query; the server side: `welcome()`, `answer()` (a success reply to each item), `send(frame,
// id)` (a message event; `id` sets the last event id), `serverClose(code, reason)` (the
// `event: close`), `fail()` (an HTTP error: the error event with readyState CLOSED), `drop()`
// (a network error: readyState CONNECTING, as EventSource before its own retry).
export class FakeEventSource {
  static instances = [];
  static server = () => {};
  static welcomed = {};
  constructor(url, init = {}) {
    this.url = url;
    this.withCredentials = Boolean(init && init.withCredentials);
    this.readyState = 0;
    this.closed = false;
    this.lastEventId = "";
    this.listeners = new Map();
    this.onopen = this.onmessage = this.onerror = null;
    FakeEventSource.instances.push(this);
    setTimeout(() => FakeEventSource.server(this), 0);
  }
  get query() { return new URL(this.url).searchParams; }
  get items() { return JSON.parse(this.query.get("subscribe") || "[]"); }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  close() {
    this.readyState = 2;
    this.closed = true;
  }
  _dispatch(type, ev) {
    if (this.closed) return;
    const handler = this[`on${type}`];
    if (typeof handler === "function") handler.call(this, ev);
    for (const fn of this.listeners.get(type) || []) fn.call(this, ev);
  }
  welcome(extra = {}) {
    this.readyState = 1;
    this._dispatch("open", {});
    const n = FakeEventSource.instances.indexOf(this) + 1;
    this.send({ type: "welcome", is_authorized: true, allowed_rooms: [], connection_id: `s${n}`,
      login_id: "x", profile: "agent", destination: "/agent/x", resume_token: null,
      ...FakeEventSource.welcomed, ...extra });
  }
  answer() {
    for (const item of this.items) this.send({ code: "success", requestId: item.requestId });
  }
  send(frame, id) {
    if (id !== undefined) this.lastEventId = id;
    this._dispatch("message", { data: JSON.stringify(frame), lastEventId: this.lastEventId });
  }
  serverClose(code, reason = "") {
    this._dispatch("close", { data: JSON.stringify({ code, reason }) });
  }
  fail() {
    this.readyState = 2;
    this._dispatch("error", {});
  }
  drop() {
    this.readyState = 0;
    this._dispatch("error", {});
  }
}
