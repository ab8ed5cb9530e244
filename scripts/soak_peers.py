"""The clients of the soak test (scripts/soak), one function per role, each run in a
thread until ``ctx.stop`` is set.

Well-behaved roles (``echo``, ``subscriber``, ``publisher``) check every message:
an echo must match what was sent, in order; a subscriber must get every message of each
publisher, in order, from the first it saw to the publisher's ``END`` marker (from
sequence number 0 for the subscribers that were there before the publishers). Any
difference, a lost connection or a reply slower than ``ctx.stall_limit`` is a
violation. The other roles misbehave (churn, slow readers, abrupt disconnects,
malformed input) and check what the server answers where the answer is defined.

Peers: websockets' sync client and websocket-client for the well-behaved roles, raw
sockets (scripts/soak_raw.py) for the rest. Everything on loopback, every wait bounded.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import websocket
from soak_raw import (
    BINARY,
    CONTINUATION,
    PING,
    TEXT,
    Closed,
    RawSocket,
    close_frame,
    frame,
    open_raw,
    upgrade_request,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

Message = Union[str, bytes]


class Tally:
    """Thread-safe counters per role, violations and echo round-trip times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.violations: list[str] = []
        self.violation_count: collections.Counter[str] = collections.Counter()
        self.round_trips: list[float] = []

    def count(self, role: str, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[role][key] += n

    def violation(self, role: str, text: str) -> None:
        with self._lock:
            self.violation_count[role] += 1
            if len(self.violations) < 100:
                self.violations.append(f"{role}: {text}")

    def round_trip(self, seconds: float) -> None:
        with self._lock:
            self.round_trips.append(seconds)


@dataclass
class Context:
    """What every role shares: the server, the stop signal, the tally, the publishers'
    progress and the server's limits (to know what it must answer)."""

    port: int
    stop: threading.Event
    tally: Tally
    send_timeout: float
    handshake_timeout: float
    max_size: int
    max_fragments: int = 65536
    stall_limit: float = 10.0
    publish_rate: float = 40.0
    #: Publisher id -> its last sequence number, once it sent its END marker.
    finished: dict[str, int] = field(default_factory=dict)
    #: Set once every publisher ended (subscribers drain until then).
    publishers_done: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def pause(self, seconds: float) -> bool:
        """Sleep unless stopped; True when the soak is stopping."""
        return self.stop.wait(seconds)


def _open_websockets(ctx: Context, path: str) -> ClientConnection:
    return ws_connect(ctx.url(path), proxy=None, open_timeout=10, close_timeout=5)


# -- well-behaved: echo ------------------------------------------------------------------

_TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyz é€😀"


def make_message(rng: random.Random, prefix: str) -> Message:
    """A text or binary message of a random size (mostly small, sometimes 64-256 KiB)."""
    roll = rng.random()
    size = (
        rng.randint(0, 200)
        if roll < 0.7
        else rng.randint(200, 8000)
        if roll < 0.97
        else rng.randint(65536, 262144)
    )
    if rng.random() < 0.5:
        return prefix + "".join(rng.choices(_TEXT_ALPHABET, k=size))
    return prefix.encode() + rng.randbytes(size)


def _send(ws: ClientConnection, rng: random.Random, message: Message) -> None:
    """Send whole, or fragmented in 2-5 frames (websockets sends an iterable that way)."""
    if len(message) < 8 or rng.random() < 0.8:
        ws.send(message)
        return
    cuts = sorted(rng.sample(range(1, len(message)), rng.randint(1, 4)))
    ws.send([message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)])


def echo(ctx: Context, index: int) -> None:
    """Long-lived echo clients: batches of 1-4 messages in flight, every reply checked
    against what was sent, in order."""
    role, rng = "echo", random.Random(index)
    while not ctx.stop.is_set():
        try:
            with _open_websockets(ctx, "/echo") as ws:
                ctx.tally.count(role, "connections")
                seq = 0
                while not ctx.stop.is_set():
                    batch = [
                        make_message(rng, f"{index}:{seq + i}:") for i in range(rng.randint(1, 4))
                    ]
                    started = time.monotonic()
                    for message in batch:
                        _send(ws, rng, message)
                    for expected in batch:
                        got = ws.recv(timeout=ctx.stall_limit)
                        if got != expected:
                            ctx.tally.violation(
                                role,
                                f"wrong echo: sent {_describe(expected)}, got {_describe(got)}",
                            )
                    ctx.tally.round_trip(time.monotonic() - started)
                    seq += len(batch)
                    ctx.tally.count(role, "messages", len(batch))
                    ctx.pause(rng.uniform(0, 0.02))
        except TimeoutError:
            ctx.tally.violation(role, f"no echo within {ctx.stall_limit} s")
        except (ConnectionClosed, OSError) as exc:
            ctx.tally.violation(role, f"connection lost: {exc!r}")
        ctx.pause(0.5)


def _describe(message: Any) -> str:
    if isinstance(message, (str, bytes)):
        head = message[:24]
        return f"{type(message).__name__}[{len(message)}] {head!r}"
    return repr(message)[:60]


# -- well-behaved: topics ----------------------------------------------------------------


def _parse(message: Message) -> tuple[str, str, str]:
    text = message if isinstance(message, str) else message.decode()
    pid, seq, rest = [*text.split(" ", 2), "", ""][:3]
    return pid, seq, rest


class Sequences:
    """What one subscriber saw of each publisher: gaps and reordering are violations."""

    def __init__(self, ctx: Context, role: str, from_zero: bool) -> None:
        self.ctx, self.role, self.from_zero = ctx, role, from_zero
        self.last: dict[str, int] = {}
        self.ended: dict[str, int] = {}

    def take(self, message: Message) -> None:
        pid, seq, rest = _parse(message)
        if seq == "END":
            final = int(rest)
            self.ended[pid] = final
            seen = self.last.get(pid, -1 if self.from_zero else final)
            if seen != final:
                self.ctx.tally.violation(
                    self.role, f"{pid} ended at {final}, last message seen was {seen}"
                )
            return
        number = int(seq)
        previous = self.last.get(pid)
        if previous is None:
            if self.from_zero and number != 0:
                self.ctx.tally.violation(self.role, f"{pid}: first message {number}, not 0")
        elif number != previous + 1:
            self.ctx.tally.violation(self.role, f"{pid}: {number} after {previous}")
        self.last[pid] = number
        self.ctx.tally.count(self.role, "messages")


def subscriber(ctx: Context, index: int, ready: threading.Event) -> None:
    """A subscriber there from before the first publisher to after the last one ended:
    it must see every message of every publisher, 0 to END, in order."""
    role = "subscriber"
    try:
        with _open_websockets(ctx, "/subscribe") as ws:
            ctx.tally.count(role, "connections")
            ready.set()
            seen = Sequences(ctx, role, from_zero=True)
            drain_until: Optional[float] = None
            while True:
                if ctx.publishers_done.is_set():
                    missing = sorted(set(ctx.finished) - set(seen.ended))
                    if not missing:
                        break
                    if drain_until is None:
                        drain_until = time.monotonic() + ctx.stall_limit
                    elif time.monotonic() > drain_until:
                        ctx.tally.violation(role, f"no END from {missing}")
                        return
                try:
                    seen.take(ws.recv(timeout=0.5))
                except TimeoutError:
                    pass
            ctx.tally.count(role, "checks", len(seen.ended))
    except (ConnectionClosed, OSError) as exc:
        ctx.tally.violation(role, f"connection lost: {exc!r}")
    finally:
        ready.set()


def publisher(ctx: Context, index: int) -> None:
    """Publishes ``pid seq padding`` at ``ctx.publish_rate`` per second, one in flight
    (each acknowledged), then ``pid END last``. One message in ten carries 16-64 KiB of
    padding, so that slow subscribers fill up within seconds (on loopback the kernel
    lets the server queue some 3 MB for a client that doesn't read)."""
    role, rng = "publisher", random.Random(1000 + index)
    pid = f"p{index}-{uuid.uuid4().hex[:6]}"
    seq = -1
    try:
        ws = websocket.create_connection(ctx.url("/publish"), timeout=ctx.stall_limit)
        try:
            ctx.tally.count(role, "connections")
            interval = 1.0 / ctx.publish_rate
            tick = time.monotonic()
            while not ctx.stop.is_set():
                seq += 1
                size = rng.randint(0, 400) if rng.random() < 0.9 else rng.randint(16384, 65536)
                ws.send(f"{pid} {seq} " + "x" * size)
                ack = ws.recv()
                if not (isinstance(ack, str) and ack.startswith("ack ")):
                    ctx.tally.violation(role, f"bad ack {ack!r}")
                ctx.tally.count(role, "messages")
                tick += interval
                ctx.pause(max(0.0, tick - time.monotonic()))
            ws.send(f"{pid} END {seq}")
            ws.recv()
            ctx.finished[pid] = seq
            ws.close(timeout=5)
        finally:
            ws.shutdown()
    except (websocket.WebSocketException, OSError) as exc:
        ctx.tally.violation(role, f"{pid} lost at {seq}: {exc!r}")


def churning_subscriber(ctx: Context, index: int) -> None:
    """Subscribers that come and go (websocket-client): contiguous sequences from the
    first message they see, then a clean close or an abrupt one."""
    role, rng = "sub-churn", random.Random(2000 + index)
    while not ctx.stop.is_set():
        try:
            ws = websocket.create_connection(ctx.url("/subscribe"), timeout=ctx.stall_limit)
            try:
                ctx.tally.count(role, "connections")
                seen = Sequences(ctx, role, from_zero=False)
                until = time.monotonic() + rng.uniform(0.3, 3.0)
                while time.monotonic() < until and not ctx.stop.is_set():
                    ws.settimeout(max(0.05, until - time.monotonic()))
                    try:
                        seen.take(ws.recv())
                    except websocket.WebSocketTimeoutException:
                        break
                ws.settimeout(5)
                if rng.random() < 0.5:
                    ws.close(timeout=5)
            finally:
                ws.shutdown()
        except (websocket.WebSocketException, OSError) as exc:
            ctx.tally.violation(role, f"connection lost: {exc!r}")
        ctx.pause(rng.uniform(0, 0.1))


# -- churn ---------------------------------------------------------------------------------


def churn(ctx: Context, index: int) -> None:
    """Open, echo one message, leave: a clean close (either library), a FIN without a
    close frame, or a reset. The echo must be right; the leaving is not checked here
    (the final descriptor and greenlet counts are)."""
    role, rng = "churn", random.Random(3000 + index)
    while not ctx.stop.is_set():
        ending = rng.choice(["clean", "clean-ws", "fin", "reset"])
        text = f"churn {index} {uuid.uuid4().hex}"
        try:
            if ending == "clean-ws":
                with _open_websockets(ctx, "/echo") as ws:
                    ws.send(text)
                    got: Any = ws.recv(timeout=ctx.stall_limit)
            else:
                client = websocket.create_connection(ctx.url("/echo"), timeout=ctx.stall_limit)
                try:
                    client.send(text)
                    got = client.recv()
                    if ending == "clean":
                        client.close(timeout=5)
                    elif ending == "reset" and client.sock is not None:
                        client.sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                finally:
                    client.shutdown()
            ctx.tally.count(role, "connections")
            ctx.tally.count(role, f"end:{ending}")
            if got != text:
                ctx.tally.violation(role, f"wrong echo {_describe(got)}")
        except (ConnectionClosed, websocket.WebSocketException, OSError) as exc:
            ctx.tally.violation(role, f"{ending}: {exc!r}")
        ctx.pause(rng.uniform(0, 0.05))


# -- slow readers ---------------------------------------------------------------------------


def slow_reader(ctx: Context, index: int) -> None:
    """Clients that never read, with a 4 KiB receive buffer. On ``/echo`` they send
    until the server stops reading (its echo is blocked on them); on ``/subscribe`` the
    publishers fill them. Either way the server must skip them (broadcast) and close
    them: once a write made no progress for ``send_timeout`` (1008), or when keepalive
    gets no pong (1011). After holding on for ``send_timeout`` plus 10 s, draining what
    the server queued (with the receive buffer raised) must reach EOF within 15 s."""
    role, rng = "slow", random.Random(4000 + index)
    while not ctx.stop.is_set():
        path = "/echo" if index % 2 == 0 else "/subscribe"
        try:
            with open_raw(ctx.port, path, timeout=2, rcvbuf=4096) as raw:
                ctx.tally.count(role, "connections")
                if path == "/echo":
                    chunk = frame(BINARY, rng.randbytes(65536))
                    try:
                        for _ in range(256):  # at most 16 MiB: far past any buffer
                            raw.send(chunk)
                    except (TimeoutError, OSError):
                        pass  # the server stopped reading: that is the point
                hold_until = time.monotonic() + ctx.send_timeout + 10
                while time.monotonic() < hold_until:
                    if ctx.pause(0.2):
                        break
                else:
                    # Drain with a large window: through an 8 KiB one, the megabytes
                    # the server's kernel still holds take a recv() each 8 KiB, and
                    # each recv() waits for the GIL behind the other client threads
                    # (13 s for 3 MB beside 4 busy threads, 0.6 s with this).
                    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                    if raw.wait_eof(time.monotonic() + 15):
                        ctx.tally.count(role, f"closed:{path}")
                    else:
                        ctx.tally.violation(role, f"{path}: still open after send_timeout")
        except (Closed, OSError) as exc:
            ctx.tally.violation(role, f"{path}: {exc!r}")
        ctx.pause(0.2)


# -- abrupt disconnects ------------------------------------------------------------------------


def abrupt(ctx: Context, index: int) -> None:
    """Connections that vanish mid-handshake, mid-frame or mid-message, with a FIN or
    a reset. Nothing to check per connection: the server must just clean up."""
    role, rng = "abrupt", random.Random(5000 + index)
    while not ctx.stop.is_set():
        where = rng.choice(["mid-handshake", "mid-frame", "mid-message", "mid-close"])
        try:
            if where == "mid-handshake":
                raw = RawSocket(ctx.port, timeout=5)
                request, _ = upgrade_request(ctx.port)
                raw.send(request[: rng.randint(1, len(request) - 1)])
            else:
                raw = open_raw(ctx.port, "/echo", timeout=5)
                if where == "mid-frame":
                    payload = rng.randbytes(rng.randint(2, 100000))
                    raw.send(frame(BINARY, payload)[: 6 + len(payload) // 2])
                elif where == "mid-message":
                    raw.send(
                        frame(TEXT, b"first part ", fin=False)
                        + frame(CONTINUATION, b"more", fin=False)
                    )
                else:
                    raw.send(close_frame(1000))  # and leave before the server's answer
            time.sleep(rng.uniform(0, 0.05))
            if rng.random() < 0.5:
                raw.reset()
            else:
                raw.close()
            ctx.tally.count(role, "connections")
            ctx.tally.count(role, f"at:{where}")
        except (Closed, OSError) as exc:
            ctx.tally.violation(role, f"{where}: {exc!r}")
        ctx.pause(rng.uniform(0, 0.05))


# -- malformed input -----------------------------------------------------------------------------


def _http_case(ctx: Context, request: bytes) -> Optional[int]:
    with RawSocket(ctx.port, timeout=10) as raw:
        raw.send(request)
        return raw.status(time.monotonic() + 10)


def _frame_case(ctx: Context, data: bytes) -> Optional[int]:
    with open_raw(ctx.port, "/echo", timeout=10) as raw:
        raw.send(data)
        return raw.close_code(time.monotonic() + 10)


def _key() -> str:
    return "dGhlIHNhbXBsZSBub25jZQ=="


def _head(port: int, lines: str, method: str = "GET") -> bytes:
    return f"{method} /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{lines}\r\n".encode()


def malformed_cases(ctx: Context) -> dict[str, tuple[Callable[[], Optional[int]], int]]:
    """Each case: how to run it (the HTTP status or close code it got, ``None`` for a
    closed connection) and what the server must answer (RFC 6455 and docs/topics/limits)."""
    port = ctx.port
    ws_lines = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {_key()}\r\n"
    fields = "".join(f"X-Filler-{i}: {'y' * 1000}\r\n" for i in range(70))
    too_big = ctx.max_size + 1
    flood = (
        frame(TEXT, b"", fin=False)
        + frame(CONTINUATION, b"", fin=False) * ctx.max_fragments
        + frame(CONTINUATION, b"", fin=True)
    )
    return {
        "garbage request": (lambda: _http_case(ctx, b"HELLO THERE\r\n\r\n"), 400),
        "plain GET": (lambda: _http_case(ctx, _head(port, "")), 426),
        "version 8": (
            lambda: _http_case(ctx, _head(port, ws_lines + "Sec-WebSocket-Version: 8\r\n")),
            426,
        ),
        "no key": (
            lambda: _http_case(
                ctx,
                _head(
                    port,
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
                ),
            ),
            400,
        ),
        "POST": (
            lambda: _http_case(
                ctx, _head(port, ws_lines + "Sec-WebSocket-Version: 13\r\n", "POST")
            ),
            405,
        ),
        "70 KiB head": (lambda: _http_case(ctx, _head(port, fields)), 431),
        "unknown path": (lambda: _http_case(ctx, upgrade_request(port, "/nowhere")[0]), 404),
        "unmasked frame": (lambda: _frame_case(ctx, frame(TEXT, b"hi", masked=False)), 1002),
        "reserved opcode": (lambda: _frame_case(ctx, frame(0x3, b"")), 1002),
        "RSV1 unnegotiated": (lambda: _frame_case(ctx, frame(TEXT, b"hi", rsv=4)), 1002),
        "lone continuation": (lambda: _frame_case(ctx, frame(CONTINUATION, b"x")), 1002),
        "data inside fragments": (
            lambda: _frame_case(ctx, frame(TEXT, b"a", fin=False) + frame(TEXT, b"b")),
            1002,
        ),
        "126-byte ping": (lambda: _frame_case(ctx, frame(PING, b"p" * 126)), 1002),
        "fragmented ping": (lambda: _frame_case(ctx, frame(PING, b"p", fin=False)), 1002),
        "close code 1005": (lambda: _frame_case(ctx, close_frame(1005)), 1002),
        "1-byte close": (lambda: _frame_case(ctx, frame(0x8, b"\x03")), 1002),
        "invalid UTF-8": (lambda: _frame_case(ctx, frame(TEXT, b"ok \xff\xfe")), 1007),
        "invalid UTF-8 fragment": (
            lambda: _frame_case(ctx, frame(TEXT, b"\xc3\x28", fin=False)),
            1007,
        ),
        "invalid close reason": (lambda: _frame_case(ctx, close_frame(1000, b"\xff")), 1007),
        "oversized frame": (lambda: _frame_case(ctx, frame(BINARY, b"", length=too_big)), 1009),
        "fragment flood": (lambda: _frame_case(ctx, flood), 1009),
    }


def malformed(ctx: Context, index: int) -> None:
    """Bad handshakes and bad frames, one case at a time: the server must answer each
    with the status or close code it documents. The fragment flood (``max_fragments``
    + 1 frames) runs one time in ten."""
    role, rng = "malformed", random.Random(6000 + index)
    cases = malformed_cases(ctx)
    names = [name for name in cases if name != "fragment flood"]
    while not ctx.stop.is_set():
        name = "fragment flood" if rng.random() < 0.1 else rng.choice(names)
        run, expected = cases[name]
        try:
            got = run()
        except (Closed, OSError) as exc:
            ctx.tally.violation(role, f"{name}: {exc!r}")
            continue
        kind = "flood" if name == "fragment flood" else "http" if expected < 1000 else "frames"
        ctx.tally.count(role, f"kind:{kind}")
        ctx.tally.count(role, "connections")
        ctx.tally.count(role, "checks")
        if got != expected:
            ctx.tally.violation(role, f"{name}: expected {expected}, got {got}")
        ctx.pause(rng.uniform(0, 0.05))


def slowloris(ctx: Context, index: int) -> None:
    """Half an upgrade request, then silence: the server must close within the
    handshake timeout (checked with 10 s to spare)."""
    role = "slowloris"
    while not ctx.stop.is_set():
        try:
            with RawSocket(ctx.port, timeout=2) as raw:
                raw.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                if raw.wait_eof(time.monotonic() + ctx.handshake_timeout + 10):
                    ctx.tally.count(role, "connections")
                    ctx.tally.count(role, "checks")
                else:
                    ctx.tally.violation(role, "not closed after the handshake timeout")
        except (Closed, OSError) as exc:
            ctx.tally.violation(role, repr(exc))
        ctx.pause(0.5)


# -- the server's own view --------------------------------------------------------------------------


def server_stats(ctx: Context) -> dict[str, Any]:
    """The handler module's ``/stats`` report (see scripts/soak_app.py)."""
    client = websocket.create_connection(ctx.url("/stats"), timeout=10)
    try:
        report: dict[str, Any] = json.loads(client.recv())
        client.close(timeout=5)
    finally:
        client.shutdown()
    return report
