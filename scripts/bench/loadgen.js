// Load generator for scripts/bench_echo.py, bench_broadcast.py and bench_compression.py.
//
// echo, handshake and broadcast print "start" when the measured phase starts (after
// every connection is open), then their result as one line of JSON.
//
//   node loadgen.js echo URL CONNECTIONS INFLIGHT SIZE SECONDS binary|text|json [COMPRESS]
//     keeps INFLIGHT messages of SIZE bytes in flight on each of CONNECTIONS
//     connections for SECONDS, then prints {"messages": N, "seconds": S, "errors": E,
//     "p50": MS, "p99": MS}: p50/p99 are round-trip times in milliseconds, from the
//     send of each message to the arrival of its echo (each connection's echoes come
//     back in order). "json" cycles through 64 different JSON-like texts of SIZE bytes.
//   node loadgen.js handshake URL PARALLEL SIZE SECONDS
//     runs PARALLEL loops for SECONDS; each loop opens a connection, sends one text
//     message of SIZE bytes, waits for its echo, closes (close handshake, then waits
//     for the TCP connection to end) and starts over. Prints {"messages": CYCLES,
//     "seconds": S, "errors": E, "p50": MS, "p99": MS}, p50/p99 of the cycle times.
//   node loadgen.js idle URL CONNECTIONS HOLD_SECONDS [COMPRESS]
//     opens CONNECTIONS idle connections (200 handshakes at a time), prints
//     "open N" once they are all open, holds them HOLD_SECONDS, closes them. With
//     COMPRESS, each connection first exchanges one JSON message (so both ends have
//     used their compression contexts) before it counts as open.
//   node loadgen.js broadcast URL CONNECTIONS INFLIGHT SIZE SECONDS [COMPRESS]
//     see broadcastRun below.
//
// COMPRESS=1 offers permessage-deflate and compresses every message (threshold 0);
// without it perMessageDeflate is off: the plain benchmarks compare framing only.
'use strict';
const WebSocket = require('ws');

function deflateOption(compress) {
  return compress === '1' ? { threshold: 0 } : false;
}

// Latency samples in milliseconds, in a growing typed array (cheap to record, cheap to
// sort), reported as percentiles.
class Samples {
  constructor() { this.values = new Float64Array(1 << 16); this.count = 0; }
  add(ms) {
    if (this.count === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[this.count++] = ms;
  }
  percentile(p) {
    if (this.count === 0) return null;
    const sorted = this.values.subarray(0, this.count).sort();
    return sorted[Math.min(this.count - 1, Math.floor(this.count * p))];
  }
  summary() { return { p50: this.percentile(0.5), p99: this.percentile(0.99) }; }
}

const now = () => Number(process.hrtime.bigint()) / 1e6;  // milliseconds

function jsonPayloads(size) {
  const out = [];
  for (let k = 0; k < 64; k++) {
    let text = '';
    for (let i = 0; text.length < size; i++) {
      text += JSON.stringify({ id: k * 1000 + i, user: `user${(k * 7 + i) % 50}`,
        action: ['click', 'view', 'scroll', 'buy'][(k + i) % 4], value: ((k + 1) * i * 37) % 1000 }) + ',';
    }
    out.push(text.slice(0, size));
  }
  return out;
}

function echo(url, connections, inflight, size, seconds, mode, compress) {
  const payloads = mode === 'json' ? jsonPayloads(size)
    : [mode === 'binary' ? Buffer.alloc(size, 7) : 'x'.repeat(size)];
  const binary = mode === 'binary';
  let received = 0, errors = 0, open = 0, started = 0, running = true, next = 0;
  const payload = () => payloads[next++ % payloads.length];
  const sockets = [];
  const latency = new Samples();
  function send(ws) {
    ws.sentAt.push(now());
    ws.send(payload(), { binary });
  }
  for (let i = 0; i < connections; i++) {
    const ws = new WebSocket(url, { perMessageDeflate: deflateOption(compress), maxPayload: 64 * 1024 * 1024 });
    ws.sentAt = [];  // send times of the messages in flight, oldest first
    sockets.push(ws);
    ws.on('open', () => {
      if (compress === '1' && !ws.extensions.includes('permessage-deflate')) {
        console.error('permessage-deflate was not negotiated'); process.exit(1);
      }
      open++;
      if (open === connections) {
        console.log('start');
        started = process.hrtime.bigint();
        for (const s of sockets) for (let j = 0; j < inflight; j++) send(s);
        setTimeout(finish, seconds * 1000);
      }
    });
    ws.on('message', () => {
      if (!running) return;
      received++;
      latency.add(now() - ws.sentAt.shift());
      send(ws);
    });
    ws.on('error', () => { errors++; });
  }
  function finish() {
    running = false;
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ messages: received, seconds: elapsed, errors, ...latency.summary() }));
    for (const s of sockets) s.terminate();
    process.exit(0);
  }
  setTimeout(() => { console.log(JSON.stringify({ messages: 0, seconds: 0, errors: -1 })); process.exit(1); }, (seconds + 60) * 1000);
}

function handshake(url, parallel, size, seconds) {
  const message = 'x'.repeat(size);
  const started = process.hrtime.bigint();
  let cycles = 0, errors = 0, running = true;
  const latency = new Samples();
  const sockets = new Set();
  function cycle() {
    if (!running) return;
    const begun = now();
    let echoed = false, failed = false;
    const ws = new WebSocket(url, { perMessageDeflate: false });
    sockets.add(ws);
    ws.on('open', () => ws.send(message));
    ws.on('message', () => { echoed = true; ws.close(1000); });
    ws.on('error', () => { failed = true; });
    ws.on('close', () => {
      sockets.delete(ws);
      if (!running) return;
      if (echoed && !failed) {
        cycles++;
        latency.add(now() - begun);
      } else errors++;
      cycle();
    });
  }
  console.log('start');
  for (let i = 0; i < parallel; i++) cycle();
  setTimeout(() => {
    running = false;
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ messages: cycles, seconds: elapsed, errors, ...latency.summary() }));
    for (const s of sockets) s.terminate();
    process.exit(0);
  }, seconds * 1000);
}

function idle(url, connections, hold, compress) {
  let opened = 0, failed = 0, next = 0;
  const sockets = [];
  const warm = compress === '1' ? jsonPayloads(1024)[0] : null;
  function openOne() {
    if (next >= connections) return;
    next++;
    const ws = new WebSocket(url, { perMessageDeflate: deflateOption(compress) });
    sockets.push(ws);
    function counted() {
      opened++;
      if (opened + failed === connections) done();
      else openOne();
    }
    ws.on('open', () => {
      if (warm === null) return counted();
      ws.once('message', counted);
      ws.send(warm);
    });
    ws.on('error', () => {
      failed++;
      if (opened + failed === connections) done();
      else openOne();
    });
  }
  function done() {
    console.log(`open ${opened} failed ${failed}`);
    setTimeout(() => { for (const s of sockets) s.terminate(); process.exit(0); }, hold * 1000);
  }
  for (let i = 0; i < 200; i++) openOne();
}

// node loadgen.js broadcast URL CONNECTIONS INFLIGHT SIZE SECONDS [COMPRESS]
//   opens CONNECTIONS clients (200 handshakes at a time); one second after the last
//   one opened, prints "start" and the first client starts publishing. Each message
//   is SIZE bytes of text that begins with its 10-digit sequence number (then padding
//   for 64 bytes, JSON-like text when larger), and the server relays every message it
//   receives to every client, the publisher included. INFLIGHT messages are kept in
//   flight: the next one is published as soon as one has reached all CONNECTIONS
//   clients. After SECONDS, stops publishing and prints {"deliveries": D, "seconds": S,
//   "errors": E, "p50": MS, "p99": MS}: p50/p99 are delivery latencies, from the
//   publish of a message to its arrival at each client. Then it waits (up to 20 s) for
//   the messages in flight to reach every client and prints {"stalled": N}, N the
//   messages some client never got. COMPRESS=1 negotiates permessage-deflate.
function broadcastRun(url, connections, inflight, size, seconds, compress) {
  const RING = 1024;  // more than the messages that can be in flight
  const publishedAt = new Float64Array(RING), missing = new Int32Array(RING);
  const filler = size > 64 ? jsonPayloads(size)[0] : 'x'.repeat(size);
  const latency = new Samples();
  let opened = 0, next = 0, delivered = 0, errors = 0, seq = 0, running = false, started = 0n;
  const sockets = [];
  let inFlight = 0, draining = false;
  function publish() {
    const slot = seq % RING;
    publishedAt[slot] = now();
    missing[slot] = connections;
    const text = String(seq).padStart(10, '0') + ' ' + filler.slice(11);
    seq++;
    inFlight++;
    sockets[0].send(text);
  }
  function onMessage(data) {
    let n = 0;
    for (let i = 0; i < 10; i++) n = n * 10 + data[i] - 48;
    const slot = n % RING;
    if (running) {
      delivered++;
      latency.add(now() - publishedAt[slot]);
    }
    if (--missing[slot] === 0) {
      inFlight--;
      if (running) publish();
      else if (draining && inFlight === 0) done(0);
    }
  }
  function finish() {
    running = false;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ deliveries: delivered, seconds, errors, ...latency.summary() }));
    // Then wait for the messages still in flight to reach every client.
    draining = true;
    if (inFlight === 0) done(0);
    setTimeout(() => done(inFlight), 20000);
  }
  function done(stalled) {
    console.log(JSON.stringify({ stalled }));
    for (const s of sockets) s.terminate();
    process.exit(0);
  }
  function openOne() {
    if (next >= connections) return;
    next++;
    const ws = new WebSocket(url, { perMessageDeflate: deflateOption(compress) });
    sockets.push(ws);
    ws.on('message', onMessage);
    ws.on('error', (e) => { errors++; console.error(String(e)); });
    ws.on('open', () => {
      if (compress === '1' && !ws.extensions.includes('permessage-deflate')) {
        console.error('permessage-deflate was not negotiated'); process.exit(1);
      }
      opened++;
      if (opened === connections) {
        setTimeout(() => {
          console.log('start');
          started = process.hrtime.bigint();
          running = true;
          for (let k = 0; k < inflight; k++) publish();
          setTimeout(finish, seconds * 1000);
        }, 1000);
      } else openOne();
    });
  }
  for (let i = 0; i < 200; i++) openOne();
  setTimeout(() => { console.error('broadcast: timed out'); process.exit(1); }, (seconds + 120) * 1000);
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'echo') echo(args[0], +args[1], +args[2], +args[3], +args[4], args[5], args[6]);
else if (cmd === 'handshake') handshake(args[0], +args[1], +args[2], +args[3]);
else if (cmd === 'idle') idle(args[0], +args[1], +args[2], args[3]);
else if (cmd === 'broadcast') broadcastRun(args[0], +args[1], +args[2], +args[3], +args[4], args[5]);
else { console.error('usage: loadgen.js echo|handshake|idle|broadcast ...'); process.exit(2); }
