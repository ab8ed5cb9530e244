// Load generator for scripts/bench_echo.py.
//
//   node loadgen.js echo URL CONNECTIONS INFLIGHT SIZE SECONDS binary|text|json [COMPRESS]
//     keeps INFLIGHT messages of SIZE bytes in flight on each of CONNECTIONS
//     connections for SECONDS, then prints {"messages": N, "seconds": S, "errors": E}.
//     "json" cycles through 64 different JSON-like texts of SIZE bytes.
//   node loadgen.js idle URL CONNECTIONS HOLD_SECONDS [COMPRESS]
//     opens CONNECTIONS idle connections (200 handshakes at a time), prints
//     "open N" once they are all open, holds them HOLD_SECONDS, closes them. With
//     COMPRESS, each connection first exchanges one JSON message (so both ends have
//     used their compression contexts) before it counts as open.
//
// COMPRESS=1 offers permessage-deflate and compresses every message (threshold 0);
// without it perMessageDeflate is off: the plain benchmarks compare framing only.
'use strict';
const WebSocket = require('ws');

function deflateOption(compress) {
  return compress === '1' ? { threshold: 0 } : false;
}

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
  for (let i = 0; i < connections; i++) {
    const ws = new WebSocket(url, { perMessageDeflate: deflateOption(compress), maxPayload: 64 * 1024 * 1024 });
    sockets.push(ws);
    ws.on('open', () => {
      if (compress === '1' && !ws.extensions.includes('permessage-deflate')) {
        console.error('permessage-deflate was not negotiated'); process.exit(1);
      }
      open++;
      if (open === connections) {
        started = process.hrtime.bigint();
        for (const s of sockets) for (let j = 0; j < inflight; j++) s.send(payload(), { binary });
        setTimeout(finish, seconds * 1000);
      }
    });
    ws.on('message', () => {
      received++;
      if (running) ws.send(payload(), { binary });
    });
    ws.on('error', () => { errors++; });
  }
  function finish() {
    running = false;
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ messages: received, seconds: elapsed, errors }));
    for (const s of sockets) s.terminate();
    process.exit(0);
  }
  setTimeout(() => { console.log(JSON.stringify({ messages: 0, seconds: 0, errors: -1 })); process.exit(1); }, (seconds + 60) * 1000);
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

// node loadgen.js broadcast URL CONNECTIONS MESSAGES [COMPRESS]
//   opens CONNECTIONS clients, then asks the server (first client sends "go MESSAGES")
//   to broadcast MESSAGES messages to all; prints {"deliveries": D, "seconds": S}, S
//   from the request to the last delivery. COMPRESS=1 negotiates permessage-deflate.
function broadcastRun(url, connections, messages, compress) {
  let opened = 0, next = 0, delivered = 0, started = 0n;
  const expected = connections * messages;
  const sockets = [];
  function finish(ok) {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(JSON.stringify({ deliveries: delivered, seconds, complete: ok }));
    for (const s of sockets) s.terminate();
    process.exit(0);
  }
  function openOne() {
    if (next >= connections) return;
    next++;
    const ws = new WebSocket(url, { perMessageDeflate: deflateOption(compress) });
    sockets.push(ws);
    ws.on('message', () => { delivered++; if (delivered === expected) finish(true); });
    ws.on('error', (e) => { console.error(String(e)); });
    ws.on('open', () => {
      opened++;
      if (opened === connections) {
        console.log('open');
        setTimeout(() => {
          started = process.hrtime.bigint();
          sockets[0].send(`go ${messages}`);
          setTimeout(() => finish(false), 120000);
        }, 1000);
      } else openOne();
    });
  }
  for (let i = 0; i < 200; i++) openOne();
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'echo') echo(args[0], +args[1], +args[2], +args[3], +args[4], args[5], args[6]);
else if (cmd === 'idle') idle(args[0], +args[1], +args[2], args[3]);
else if (cmd === 'broadcast') broadcastRun(args[0], +args[1], +args[2], args[3]);
else { console.error('usage: loadgen.js echo|idle ...'); process.exit(2); }
