// com-broker-compat.js: the Communication Broker's JavaScript client API (the one of its
// com-broker-1-0.js, current upstream version), written for combroker. A classic script, no
// module, no dependency.
//
// It speaks what that client speaks, so pages written for it keep working: STOMP frames over a
// WebSocket with the `stomp` subprotocol, a static-key login (PROTOCOL §2.2: `login`, `passcode`
// = the profile key, `secret-key` = the application key from the global CFG_STOMP_SECRET_KEY),
// `transaction` on SUBSCRIBE/UNSUBSCRIBE/SEND answered with ACK `error-desc`, UNSUBSCRIBE without
// `id` (drops every subscription), and DISCONNECT with `receipt-id`.
//
//   CFG_STOMP_SECRET_KEY = "my_app_secret_key";
//   const c = new COM_BROKER_Client("page-1", "ws://host/ws/");
//   c.linkEvents(onOpen, onClosed, onError, onMessage, onACK);
//   c.connect("bob", "my_agent_secret_key");             // login id, profile key
//   c.subscribe("/agent/.*", 1);                         // 1: a regular expression
//   c.send("/agent/bob", "hello");                       // content type: text/plain
//   c.unsubscribe();
//   c.diconnectToServer();                               // (sic, the original's name)
//
// Callbacks: onOpen(sessionId, destination, profile, connectionId),
// onClosed(sessionId, code, reason), onError(errorText or event),
// onMessage(origin, destination, contentType, body), onACK(text).
// As in the original, ERROR and ACK frames are read through their `error-desc` header only.
//
// The older version of com-broker-1-0.js named the methods connectToServer, suscribe,
// unsuscribe and sendText, and called onClosed(code, reason): those names still work here (the
// callback follows the current version).

/* exported CFG_STOMP_SECRET_KEY, COM_BROKER_Client */
/* eslint-disable no-var */
var CFG_STOMP_SECRET_KEY = typeof CFG_STOMP_SECRET_KEY === "string" ? CFG_STOMP_SECRET_KEY : "";

var COM_BROKER_Client = (function () {
  "use strict";

  var CLOSE_TEXT = {
    1000: "Normal closure.",
    1001: "The server is going away.",
    1006: "The connection was closed abnormally.",
    1008: "Policy violation (origin not allowed).",
    1009: "Message too big.",
    1011: "The server could not complete the login (auth-unavailable).",
    4003: "Refused.",
    4008: "Closed as slow.",
    4009: "Replaced by a newer login.",
    4010: "Kicked.",
    4029: "Rate limited.",
  };

  // One STOMP frame: "COMMAND\nkey:value\n...\n\nbody\0". Header names and values are trimmed,
  // as the Communication Broker does; content-length, when present, bounds the body.
  function parseFrame(text) {
    var end = text.indexOf("\n\n");
    var head = end < 0 ? text : text.slice(0, end);
    var rest = end < 0 ? "" : text.slice(end + 2);
    var lines = head.split("\n");
    var frame = { command: lines[0].replace(/\r$/, "").trim(), headers: {}, body: "" };
    for (var i = 1; i < lines.length; i++) {
      var line = lines[i].replace(/\r$/, "");
      var colon = line.indexOf(":");
      if (colon < 0) continue;
      var name = line.slice(0, colon).trim();
      if (!(name in frame.headers)) frame.headers[name] = line.slice(colon + 1).trim();
    }
    var nul = rest.indexOf("\0");
    frame.body = nul < 0 ? rest : rest.slice(0, nul);
    return frame;
  }

  function buildFrame(command, headers, body) {
    return command + "\n" + headers.map(function (h) { return h + "\n"; }).join("") + "\n" +
      (body || "") + "\0";
  }

  function noop() {}

  function Client(idClient, wsurl) {
    this.m_id = idClient;
    this.url = wsurl;
    this.ws = null;
    this.m_debug = false;
    this.cur_session = "";
    this.cur_destination = "";
    this.id_client = 0;
    this.fb_onOpen = noop;
    this.fb_onClosed = noop;
    this.fb_onError = noop;
    this.fb_onMessage = noop;
    this.fb_onACK = noop;
  }

  Client.prototype.NextId = function () {
    this.id_client = (this.id_client % 1000) + 1;
    return this.id_client;
  };

  Client.prototype.linkEvents = function (onOpen, onClosed, onError, onMessage, onACK) {
    this.fb_onOpen = onOpen || noop;
    this.fb_onClosed = onClosed || noop;
    this.fb_onError = onError || noop;
    this.fb_onMessage = onMessage || noop;
    this.fb_onACK = onACK || noop;
  };

  Client.prototype.activeDebug = function () { this.m_debug = true; };
  Client.prototype.deactiveDebug = function () { this.m_debug = false; };
  Client.prototype.w_debug = function (text) {
    if (this.m_debug) console.debug("[" + this.m_id + "] " + text);
  };

  Client.prototype._sendraw = function (data) {
    if (!this.ws || this.ws.readyState !== 1) {
      this.fb_onError("not connected");
      return;
    }
    this.w_debug("<< " + data);
    this.ws.send(data);
  };

  Client.prototype.connect = function (login_id, secret_key) {
    if (this.ws) {
      console.warn("[" + this.m_id + "] This client is already connected.");
      return;
    }
    var self = this;
    var ws = new WebSocket(this.url, ["stomp"]);
    this.ws = ws;
    ws.onopen = function () {
      self.w_debug("WS open");
      ws.send(buildFrame("CONNECT", [
        "accept-version:1.2",
        "login:" + login_id,
        "passcode:" + secret_key,
        "secret-key:" + CFG_STOMP_SECRET_KEY,
      ], ""));
    };
    ws.onmessage = function (e) { self._onFrame(parseFrame(String(e.data))); };
    ws.onerror = function (e) { self.fb_onError(e); };
    ws.onclose = function (e) {
      if (self.ws === ws) self.ws = null;
      self.fb_onClosed(self.cur_session, e.code,
        e.reason || CLOSE_TEXT[e.code] || "Unknown reason");
    };
  };

  Client.prototype._onFrame = function (msg) {
    this.w_debug(">> " + msg.command + " " + JSON.stringify(msg.headers));
    var h = msg.headers;
    if (msg.command === "CONNECTED") {
      this.cur_session = h["session-id"] || h.session || "";
      this.cur_destination = h.destination || "";
      this.fb_onOpen(this.cur_session, this.cur_destination, h["profile-desc"], h["connection-id"]);
    } else if (msg.command === "MESSAGE") {
      this.fb_onMessage(h.origin, h.destination, h["content-type"], msg.body);
    } else if (msg.command === "ACK" || msg.command === "ERROR") {
      var desc = h["error-desc"];
      if (desc === "OK") this.fb_onACK(desc + "\n" + msg.body);
      else this.fb_onError(desc);
    } else if (msg.command === "RECEIPT") {
      this.w_debug("receipt " + h["receipt-id"]);
    }
  };

  Client.prototype.diconnectToServer = function () {
    this._sendraw(buildFrame("DISCONNECT", ["receipt-id:" + this.NextId()], ""));
  };

  Client.prototype.subscribe = function (destination, use_regex) {
    this._sendraw(buildFrame("SUBSCRIBE", [
      "transaction:" + this.NextId(),
      "session-id:" + this.cur_session,
      "destination-type:" + (use_regex ? 1 : 0),
      "destination:" + destination,
    ], ""));
  };

  Client.prototype.unsubscribe = function () {
    this._sendraw(buildFrame("UNSUBSCRIBE", [
      "transaction:" + this.NextId(),
      "session-id:" + this.cur_session,
    ], ""));
  };

  Client.prototype.send = function (destiny, body, content_type) {
    body = String(body);
    this._sendraw(buildFrame("SEND", [
      "transaction:" + this.NextId(),
      "session-id:" + this.cur_session,
      "destination:" + destiny,
      "content-type:" + (content_type || "text/plain"),
      "content-length:" + new TextEncoder().encode(body).length,
    ], body));
  };

  // The older version's names, kept for pages written for it.
  Client.prototype.connectToServer = Client.prototype.connect;
  Client.prototype.suscribe = Client.prototype.subscribe;
  Client.prototype.unsuscribe = Client.prototype.unsubscribe;
  Client.prototype.sendText = Client.prototype.send;

  Client.parseFrame = parseFrame;
  return Client;
})();
