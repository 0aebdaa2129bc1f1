// Load generator worker for bench/run: one process holds many WebSocket (or STOMP/TCP)
// clients, subscribes them, counts deliveries and samples trigger-to-receive latency.
//
// Config: JSON in argv[2]. Control: one JSON command per stdin line, one JSON event per
// stdout line. Commands: {"cmd":"go"} (start connecting when cfg.wait_go), {"cmd":"report"}
// (cumulative delivery count + latency samples since the last report), {"cmd":"close"}.
//
// Latency: every payload carries "t": CLOCK_MONOTONIC in microseconds at trigger time (the
// sender is another process; process.hrtime and Python's time.monotonic_ns share that clock).
'use strict';
const net = require('net');
const WebSocket = require('ws');

const cfg = JSON.parse(process.argv[2]);
const N = cfg.n, OFF = cfg.offset || 0;
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

let recv = 0, lastUs = 0, lat = [], seenLat = 0;
const LAT_CAP = cfg.lat_cap || 50000;
let errors = 0, firstError = null, closedEarly = 0, closeCodes = {};
const socks = [];
const connectMs = [];

function onData(buf) {
  const now = nowUs();
  recv++;
  lastUs = now;
  const i = buf.indexOf('"t":');
  if (i < 0) return;
  let j = i + 4, t = 0, c;
  while (buf[j] === 32) j++;  // json.dumps writes '"t": 1'
  while (j < buf.length && (c = buf[j]) >= 48 && c <= 57) { t = t * 10 + (c - 48); j++; }
  seenLat++;
  const v = now - t;
  if (lat.length < LAT_CAP) lat.push(v);
  else { const k = Math.floor(Math.random() * seenLat); if (k < LAT_CAP) lat[k] = v; }
}

function subsFor(idx) {
  switch (cfg.subs) {
    case 'same': return [[cfg.room || { bench: 'b1' }, 1]];
    case 'own': return [[{ user: idx }, idx]];
    case 'two': return [[{ user: idx }, 1], [{ bench: 'idle' }, 2]];
    default: return [];
  }
}

function fail(e) { errors++; if (!firstError) firstError = String(e && e.message || e); }

function openWs(idx) {
  return new Promise((resolve) => {
    const t0 = nowUs();
    // "{i}" in the query: the client's index (distinct credentials per client, B3)
    const ws = new WebSocket(cfg.url + (cfg.query || '').replace('{i}', idx), cfg.subprotocol ? [cfg.subprotocol] : [], {
      perMessageDeflate: false, handshakeTimeout: 60000,
    });
    const subs = subsFor(idx);
    let stage = 0, acks = 0, done = false;
    const timer = setTimeout(() => {
      if (!done) { fail('timeout at stage ' + stage + ' (0 welcome, 1 subscribe)'); ws.terminate(); finish(false); }
    }, cfg.client_timeout_ms || 60000);
    const finish = (ok) => { if (!done) { done = true; clearTimeout(timer); if (ok) { connectMs.push((nowUs() - t0) / 1000); socks.push(ws); } resolve(ok); } };
    ws.on('message', (buf) => {
      if (stage === 2) return onData(buf);
      if (stage === 0) {
        const s = buf.toString();
        if (s.indexOf('"is_authorized":true') < 0 && s.indexOf('"is_authorized": true') < 0) {
          fail('refused: ' + s.slice(0, 200)); ws.terminate(); return finish(false);
        }
        stage = 1;
        if (!subs.length) { stage = 2; return finish(true); }
        for (const [room, rid] of subs) ws.send(JSON.stringify({ type: 'subscribe', room, requestId: rid }));
        return;
      }
      const s = buf.toString();
      if (s.indexOf('success') >= 0) { if (++acks === subs.length) { stage = 2; finish(true); } }
      else { fail('subscribe: ' + s.slice(0, 200)); ws.terminate(); finish(false); }
    });
    ws.on('error', (e) => { fail(e); finish(false); });
    ws.on('close', (code, reason) => {
      closeCodes[code] = (closeCodes[code] || 0) + 1;
      if (stage === 2) closedEarly++; else if (!done) fail('closed ' + code + ' ' + reason);
      finish(false);
    });
  });
}

// STOMP 1.2 over the TCP gate (standard NUL-terminated framing).
function openStomp(idx) {
  return new Promise((resolve) => {
    const t0 = nowUs();
    const s = net.connect(cfg.port, cfg.host || '127.0.0.1');
    s.setNoDelay(true);
    let stage = 0, done = false, pending = Buffer.alloc(0);
    const timer = setTimeout(() => {
      if (!done) { fail('timeout at stage ' + stage); s.destroy(); finish(false); }
    }, cfg.client_timeout_ms || 60000);
    const finish = (ok) => { if (!done) { done = true; clearTimeout(timer); if (ok) { connectMs.push((nowUs() - t0) / 1000); socks.push(s); } resolve(ok); } };
    s.on('connect', () => {
      s.write('CONNECT\naccept-version:1.2\nhost:bench\nheart-beat:0,0\ntoken:' + (cfg.token || 'x') + '\n\n\0');
    });
    s.on('data', (chunk) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let z;
      while ((z = pending.indexOf(0)) >= 0) {
        const frame = pending.subarray(0, z);
        pending = pending.subarray(z + 1);
        let k = 0; while (k < frame.length && (frame[k] === 10 || frame[k] === 13)) k++;
        const f = frame.subarray(k);
        if (!f.length) continue;
        if (stage === 2) { onData(f); continue; }
        const head = f.subarray(0, 12).toString();
        if (stage === 0) {
          if (!head.startsWith('CONNECTED')) { fail('stomp: ' + f.toString().slice(0, 200)); s.destroy(); return finish(false); }
          stage = 1;
          const room = JSON.stringify(cfg.room || { bench: 'b1' });
          s.write('SUBSCRIBE\nid:1\ndestination:/room/' + room + '\nreceipt:r1\n\n\0');
        } else if (stage === 1) {
          if (head.startsWith('RECEIPT')) { stage = 2; finish(true); }
          else { fail('stomp sub: ' + f.toString().slice(0, 200)); s.destroy(); return finish(false); }
        }
      }
    });
    s.on('error', (e) => { fail(e); finish(false); });
    s.on('close', () => { if (stage === 2) closedEarly++; finish(false); });
  });
}

async function connectAll() {
  const t0 = nowUs();
  const open = cfg.stomp ? openStomp : openWs;
  let next = 0, ok = 0;
  const conc = cfg.concurrency || 100;
  async function lane() {
    while (next < N) { const i = OFF + next++; if (await open(i)) ok++; }
  }
  await Promise.all(Array.from({ length: Math.min(conc, N) }, lane));
  connectMs.sort((a, b) => a - b);
  const q = (p) => connectMs.length ? connectMs[Math.min(connectMs.length - 1, Math.floor(p * connectMs.length))] : null;
  out({ ev: 'ready', ok, errors, first_error: firstError, start_us: t0, end_us: nowUs(),
        connect_p50_ms: q(0.5), connect_p99_ms: q(0.99) });
}

let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
    if (!line.trim()) continue;
    const c = JSON.parse(line);
    if (c.cmd === 'go') connectAll();
    else if (c.cmd === 'report') {
      out({ ev: 'report', recv, last_us: lastUs, lat, seen: seenLat, closed_early: closedEarly,
            close_codes: closeCodes, open: socks.length });
      lat = []; seenLat = 0;
    } else if (c.cmd === 'close') {
      for (const s of socks) { try { s.terminate ? s.terminate() : s.destroy(); } catch (e) {} }
      out({ ev: 'closed' });
      setTimeout(() => process.exit(0), 50);
    }
  }
});
process.stdin.on('end', () => process.exit(0));
if (!cfg.wait_go) connectAll();
