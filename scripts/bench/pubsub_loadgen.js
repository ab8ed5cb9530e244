// Load generator for scripts/bench_pubsub.py: fan-out through several server processes.
//
//   node pubsub_loadgen.js CONFIG_JSON
//
// CONFIG_JSON: {"subscribers": 1000, "subs": [URL, ...], "pubs": [URL, ...], "size": 64,
//               "phases": [[NAME, "rate", SECONDS, MSG_PER_S], [NAME, "throughput", SECONDS, WINDOW]],
//               "lostAfter": 30, "overload": 1}
//
// Opens the subscribers (spread round-robin over the "subs" URLs, 100 handshakes at a
// time) and one publisher connection per "pubs" URL; the servers relay every message a
// publisher sends to every subscriber, through their broker. Then it warms up: one
// message every 20 ms until one of them reached every subscriber (so every subscription
// is in force end to end), waits for the rest of them, and runs the phases in order, each
// of one of two kinds (NAME labels its lines):
//
//   rate        publishes MSG_PER_S messages per second (in total, the publishers taking
//               turns) for SECONDS. A message that took over "overload" seconds to
//               reach every subscriber means the servers can't keep up ("overloaded"):
//               the phase ends at once if it is still running, and the later rate
//               phases are skipped (a line {"event": "skipped", "phase": P} each);
//   throughput  keeps WINDOW messages in flight (in total): the next message is
//               published as soon as one has reached every subscriber.
//
// Each message is SIZE bytes of text: its sequence number (10 digits), a space, the
// time it was sent in microseconds of this process's monotonic clock (12 digits), a
// space and padding. Each subscriber computes the delivery latency from the timestamp
// inside the payload when the message arrives (the publishers and subscribers share
// this process's clock).
//
// Every line on stdout is one JSON object:
//   {"event": "start", "phase": P}   the phase starts (every connection open, warm);
//   {"event": "end", "phase": P, "deliveries": D, "seconds": S, "published": N,
//    "lost": L}                      the phase ended: D deliveries received and N
//                                    messages published during it; L messages given up
//                                    (some subscriber didn't get them within lostAfter
//                                    seconds; in the throughput phase they are replaced,
//                                    to keep the window);
//   {"event": "drained", "phase": P, "stalled": N, "overloaded": B, "p50": MS,
//    "p99": MS, "max": MS, "servers": [{"p50": MS, "p99": MS, "max": MS}, ...]}
//                                    after waiting (up to lostAfter) for the messages still
//                                    in flight: N of them never reached every subscriber;
//                                    B, whether the rate was not sustained;
//                                    latency percentiles of every delivery of the
//                                    messages published during the phase, including
//                                    those that arrived after its end; and the same for
//                                    the subscribers of each "subs" URL.
// Exits 1 (after a line on stderr) if a connection fails or the warm-up times out.
'use strict';
const WebSocket = require('ws');
const { performance } = require('perf_hooks');

const config = JSON.parse(process.argv[2]);
const N = config.subscribers;
const SIZE = config.size || 64;
const LOST_AFTER = (config.lostAfter || 30) * 1000;
const OVERLOAD = (config.overload || 1) * 1000;
const RING = 1 << 16;  // more than the messages that can be in flight at once

const nowUs = () => Math.round(performance.now() * 1000);

// Latency samples in milliseconds, in a growing typed array.
class Samples {
  constructor() { this.values = new Float64Array(1 << 18); this.count = 0; }
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
  summary() {
    return { p50: this.percentile(0.5), p99: this.percentile(0.99), max: this.percentile(1) };
  }
}

function fail(message) {
  console.error(message);
  process.exit(1);
}

// -- messages in flight -----------------------------------------------------------------
const missing = new Int32Array(RING);      // subscribers that haven't got it yet
const sentAt = new Float64Array(RING);     // performance.now() at publish, ms
const slotSeq = new Float64Array(RING).fill(-1);  // which message owns the slot
const inFlight = new Set();                // sequence numbers not yet everywhere
let seq = 0;
const padding = 'x'.repeat(Math.max(0, SIZE - 24));

// The phase being measured (null between phases).
let phase = null;

const publishers = [];
const subscribers = [];

function publish() {
  const n = seq++;
  const slot = n % RING;
  if (slotSeq[slot] >= 0 && inFlight.has(slotSeq[slot])) fail('too many messages in flight');
  slotSeq[slot] = n;
  missing[slot] = N;
  inFlight.add(n);
  const stamp = nowUs();
  sentAt[slot] = stamp / 1000;
  const text = String(n).padStart(10, '0') + ' ' + String(stamp).padStart(12, '0') + ' ' + padding;
  publishers[n % publishers.length].send(text);
  if (phase !== null) phase.published++;
}

function completed(n, delivered) {
  inFlight.delete(n);
  if (delivered && phase !== null && phase.kind === 'rate' && n >= phase.firstSeq && n < phase.endSeq
      && performance.now() - sentAt[n % RING] > OVERLOAD) {
    phase.overloaded = overloaded = true;  // also when it arrives after the phase
  }
  if (phase !== null && phase.kind === 'throughput' && phase.running) publish();
  if (onIdle !== null && inFlight.size === 0) { const f = onIdle; onIdle = null; f(); }
}
let onIdle = null;

function onMessage(data, server) {
  let n = 0, stamp = 0;
  for (let i = 0; i < 10; i++) n = n * 10 + data[i] - 48;
  for (let i = 11; i < 23; i++) stamp = stamp * 10 + data[i] - 48;
  const slot = n % RING;
  if (slotSeq[slot] !== n || !inFlight.has(n)) return;  // given up already
  if (phase !== null) {
    if (phase.running) phase.deliveries++;
    if (n >= phase.firstSeq && n < phase.endSeq) {
      const ms = (nowUs() - stamp) / 1000;
      phase.latency.add(ms);
      phase.perServer[server].add(ms);
    }
  }
  if (--missing[slot] === 0) completed(n, true);
}

// Messages that some subscriber never got: given up after LOST_AFTER.
setInterval(() => {
  const limit = performance.now() - LOST_AFTER;
  for (const n of inFlight) {
    if (sentAt[n % RING] < limit) {
      if (phase !== null) phase.lost++;
      completed(n, false);
    }
  }
}, 250);

// -- connections ----------------------------------------------------------------------
function openAll(done) {
  const total = N + config.pubs.length;
  let next = 0, opened = 0;
  function openOne() {
    if (next >= total) return;
    const i = next++;
    const isPublisher = i >= N;
    const url = isPublisher ? config.pubs[i - N] : config.subs[i % config.subs.length];
    const ws = new WebSocket(url, { perMessageDeflate: false });
    (isPublisher ? publishers : subscribers).push(ws);
    if (!isPublisher) {
      const server = i % config.subs.length;
      ws.on('message', (data) => onMessage(data, server));
    }
    ws.on('error', (e) => fail(`connection ${i} to ${url}: ${e}`));
    ws.on('close', (code) => {
      if (!finished) fail(`connection ${i} to ${url} closed (${code})`);
    });
    ws.on('open', () => {
      opened++;
      if (opened === total) done();
      else openOne();
    });
  }
  for (let k = 0; k < 100; k++) openOne();
}

function warmUp(done) {
  let warm = false;
  const firstWarm = seq;
  const timer = setInterval(() => {
    for (let n = firstWarm; n < seq; n++) {
      if (slotSeq[n % RING] === n && !inFlight.has(n)) warm = true;
    }
    if (warm) {
      clearInterval(timer);
      clearTimeout(deadline);
      const go = () => setTimeout(done, 500);
      if (inFlight.size === 0) go(); else onIdle = go;
    } else publish();
  }, 20);
  const deadline = setTimeout(() => fail('warm-up: no message reached every subscriber in 60 s'), 60000);
}

// -- phases ---------------------------------------------------------------------------
let overloaded = false;  // a rate phase fell behind: the higher rates are skipped

function runPhase([name, kind, seconds, param], done) {
  if (kind !== 'throughput' && kind !== 'rate') fail(`unknown phase kind ${kind}`);
  if (kind === 'rate' && overloaded) {
    console.log(JSON.stringify({ event: 'skipped', phase: name }));
    return done();
  }
  phase = {
    name, kind, running: true, deliveries: 0, published: 0, lost: 0, overloaded: false,
    firstSeq: seq, endSeq: Infinity, latency: new Samples(),
    perServer: config.subs.map(() => new Samples()),
  };
  console.log(JSON.stringify({ event: 'start', phase: name }));
  const started = performance.now();
  let ticker = null;
  if (kind === 'throughput') {
    for (let k = 0; k < param; k++) publish();
  } else {
    const perMs = param / 1000;
    ticker = setInterval(() => {
      // Behind: a message published over OVERLOAD ago hasn't reached everyone yet.
      const oldest = inFlight.values().next();
      if (!oldest.done && performance.now() - sentAt[oldest.value % RING] > OVERLOAD) {
        phase.overloaded = overloaded = true;
        end();
        return;
      }
      const due = Math.floor((performance.now() - started) * perMs) - phase.published;
      for (let k = 0; k < due; k++) publish();
    }, 1);
  }
  const timer = setTimeout(end, seconds * 1000);
  function end() {
    clearTimeout(timer);
    if (ticker !== null) clearInterval(ticker);
    phase.running = false;
    phase.endSeq = seq;
    const elapsed = (performance.now() - started) / 1000;
    console.log(JSON.stringify({
      event: 'end', phase: name, deliveries: phase.deliveries, seconds: elapsed,
      published: phase.published, lost: phase.lost,
    }));
    const drained = () => {
      clearTimeout(limit);
      onIdle = null;
      console.log(JSON.stringify({
        event: 'drained', phase: name, stalled: inFlight.size, overloaded: phase.overloaded,
        ...phase.latency.summary(), servers: phase.perServer.map((s) => s.summary()),
      }));
      // Forget what never arrived, so that the next phase starts clean.
      for (const n of [...inFlight]) inFlight.delete(n);
      phase = null;
      setTimeout(done, 500);
    };
    const limit = setTimeout(drained, LOST_AFTER);
    if (inFlight.size === 0) drained(); else onIdle = drained;
  }
}

let finished = false;
function runPhases(k) {
  if (k === config.phases.length) {
    finished = true;
    for (const ws of [...subscribers, ...publishers]) ws.terminate();
    process.exit(0);
  }
  runPhase(config.phases[k], () => runPhases(k + 1));
}

const total = config.phases.reduce((sum, p) => sum + p[2], 0);
const slack = 90 + config.phases.length * (LOST_AFTER / 1000 + 1);  // connect, warm up, drain
setTimeout(() => fail('pubsub: timed out'), (total + slack) * 1000);
openAll(() => warmUp(() => runPhases(0)));
