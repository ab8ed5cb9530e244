"""The connection layer under cancellation: timeouts, ``gevent.Timeout`` and ``kill()``
at every point where a greenlet can switch, against an independent raw-socket peer in a
thread that checks the bytes on the wire (tests/utils.RawPeer: its own framing code).

The connection runs in this thread's gevent hub, over a real TCP connection on
loopback with small socket buffers (so large writes block); the peer is a plain
blocking socket driven by a thread. Waits in the hub poll with ``gevent.sleep`` (never
a blocking call that would stall the hub), each with a deadline.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any, Callable, Iterator, Optional

import gevent
import gevent.socket
import greenlet
import pytest

from geventws import Connection, ConnectionClosed, ConnectionClosedError

from .tcp_peers import Peer, no_descriptor_leaks, server_connection, tcp_pair
from .utils import RawPeer, client_frame

BIG = os.urandom(256 * 1024)


# -- fixtures ------------------------------------------------------------------------------


class SlowSocket:
    """A socket that reads 2 KiB at a time with a pause: a slow reader, so that writes
    to it block (and switch greenlets) many times."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        time.sleep(0.002)
        return self._sock.recv(min(size, 2048))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def read_all(raw: RawPeer, answer_close: bool = True) -> tuple[list[tuple[int, bytes]], Any]:
    """Every frame until the close (answered) or EOF: (data frames, close code or None).
    Raises if the bytes don't parse as frames."""
    frames: list[tuple[int, bytes]] = []
    while True:
        try:
            _, opcode, payload = raw.read_frame()
        except (EOFError, ConnectionResetError):
            return frames, None
        if opcode == 8:
            if answer_close:
                try:
                    raw.send(client_frame(8, payload[:2]))
                    raw.sock.shutdown(socket.SHUT_WR)  # as a client ends TCP after it
                except OSError:
                    pass
            return frames, close_code(payload)
        frames.append((opcode, payload))


class SwitchPoints:
    """Count where ``victim`` switches greenlets, or interrupt it there: at its
    ``at``-th switch, ``exception()`` is thrown into it (as a ``gevent.Timeout`` around
    the call or a ``kill()`` would be)."""

    def __init__(
        self, at: Optional[int] = None, exception: Callable[[], BaseException] = gevent.Timeout
    ) -> None:
        self.at = at
        self.exception = exception
        self.count = 0
        self.victim: Any = None
        self._previous: Any = None

    def _trace(self, event: str, args: Any) -> None:
        if event == "switch" and args[0] is self.victim and not self.victim.dead:
            self.count += 1
            if self.count == self.at:
                self.victim.kill(self.exception(), block=False)
        if self._previous is not None:
            self._previous(event, args)

    def run(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` in a greenlet under the trace; its result, or the exception
        that ended it (returned, not raised)."""
        self.victim = gevent.spawn(function)
        self._previous = greenlet.settrace(self._trace)
        try:
            self.victim.join(30)
        finally:
            greenlet.settrace(self._previous)
        assert self.victim.ready(), "the operation hung"
        return self.victim.value if self.victim.successful() else self.victim.exception


INTERRUPTIONS = [
    pytest.param(gevent.Timeout, id="timeout"),
    pytest.param(greenlet.GreenletExit, id="kill"),
]


def injection_points(count: int, limit: int = 40) -> list[int]:
    """1..count, thinned to about ``limit`` points (always the first and last)."""
    if count <= limit:
        return list(range(1, count + 1))
    step = count / limit
    return sorted({1, count, *(int(1 + i * step) for i in range(limit))})


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    yield from no_descriptor_leaks()


# -- the six scenarios of the issue ---------------------------------------------------------


def test_receive_timeout_inline_keeps_answering_pings() -> None:
    """1. ``receive(timeout)`` timing out while reading inline leaves someone reading:
    a handler that then only pushes still answers pings, so keepalive never closes a
    healthy peer."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> list[bytes]:
        raw = peer.raw
        peer.go.wait(10)
        pongs = []
        for n in range(3):
            raw.send(client_frame(9, b"ping %d" % n))
            while True:
                _, opcode, payload = raw.read_frame()
                if opcode == 10:
                    pongs.append(payload)
                    break
        raw.send(client_frame(8, struct.pack("!H", 1000)))
        read_all(raw, answer_close=False)
        return pongs

    peer = Peer(theirs, script)
    connection = server_connection(ours, ping_interval=0.05, ping_timeout=0.5)
    with pytest.raises(TimeoutError):
        connection.receive(timeout=0.05)
    peer.go.set()
    # A push-only handler: never receives again, sends ticks.
    while not connection.closed:
        try:
            connection.send("tick")
        except ConnectionClosed:
            break
        gevent.sleep(0.01)
    assert peer.finish() == [b"ping 0", b"ping 1", b"ping 2"]
    assert connection.close_code == 1000
    connection.abort()


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_interrupted_large_send_never_tears_a_frame(interruption: Any) -> None:
    """2. A ``gevent.Timeout`` or ``kill()`` interrupting ``send()`` of a large message
    doesn't truncate it on the wire: the rest is written later, whole and in order, and
    what is sent next follows it."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        peer.go.wait(10)  # don't read until the send was interrupted
        return read_all(raw)

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    points = SwitchPoints(at=1, exception=interruption)
    outcome = points.run(lambda: connection.send(BIG, binary=True))
    assert isinstance(outcome, interruption)  # it was blocked, and interrupted there
    assert not connection.closed
    peer.go.set()
    connection.send("next")  # over the high-water mark: waits for the rest to go out
    connection.close()
    frames, code = peer.finish()
    assert frames == [(2, BIG), (1, b"next")]
    assert code == 1000


def test_receive_timeout_never_loses_a_message_read_with_a_ping() -> None:
    """3. A ping and a message arrive in one read while another greenlet holds the
    write lock (blocked on a peer that doesn't read): the pong is queued, never awaited,
    so ``receive(timeout)`` returns the message; and if it had timed out, the next call
    would have it."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        raw.send(client_frame(9, b"are you there") + client_frame(1, b"the message"))
        peer.go.wait(10)
        return read_all(raw)

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    blocked = gevent.spawn(connection.send, BIG, binary=True)  # holds the write lock
    gevent.sleep(0.05)
    assert not blocked.ready()  # it can't finish: the peer doesn't read
    assert connection.receive(timeout=2) == "the message"
    peer.go.set()
    blocked.join(10)
    assert blocked.successful()
    connection.close()
    frames, code = peer.finish()
    assert frames == [(2, BIG), (10, b"are you there")]
    assert code == 1000


def test_receive_deadline_is_not_held_up_by_output_the_peer_does_not_read() -> None:
    """4. ``receive(timeout)`` returns on its deadline even when output queued before
    it can't be written because the peer doesn't read: the output goes out in the
    background, never waited for by ``receive()``. It is not lost: it is written once
    the peer reads."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        peer.go.wait(20)
        return read_all(raw)

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    small = b"x" * 60000  # under the high-water mark: queued, not written by send()
    connection.send(small, binary=True)
    attempt = gevent.spawn(connection.receive, 0.2)
    attempt.join(15)  # a liveness bound, not a measurement: it must return at all
    assert attempt.ready(), "receive() waited for the flush beyond its deadline"
    assert isinstance(attempt.exception, TimeoutError)
    peer.go.set()
    connection.close()
    frames, code = peer.finish()
    assert frames == [(2, small)]
    assert code == 1000


def test_keepalive_deadline_closes_a_peer_that_stopped_reading_while_a_send_blocks() -> None:
    """5. The keepalive deadline starts when the ping is queued, so a peer that stopped
    reading is closed with 1011 after ping_timeout even while our send is blocked (and
    without send_timeout); the blocked send raises ConnectionClosedError(1011)."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> None:
        peer.go.wait(20)  # never reads until the test is over

    peer = Peer(theirs, script)
    connection = server_connection(ours, ping_interval=0.1, ping_timeout=0.2)
    sender = gevent.spawn(connection.send, BIG * 8, binary=True)
    sender.join(15)
    peer.go.set()
    assert sender.ready(), "the blocked send was never released"
    assert isinstance(sender.exception, ConnectionClosedError)
    assert sender.exception.code == 1011
    assert connection.close_code == 1011
    peer.finish()
    connection.abort()


# -- every switch point -------------------------------------------------------------------


def count_switches(build: Callable[[], tuple[Connection, Peer, Callable[[], Any]]]) -> int:
    connection, peer, operation = build()
    points = SwitchPoints()
    points.run(operation)
    connection.close()
    connection.abort()
    peer.go.set()
    peer.finish()
    return points.count


def sending_scenario() -> tuple[Connection, Peer, Callable[[], Any]]:
    """A large send to a peer that reads slowly (it switches many times)."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        return read_all(raw)

    connection = server_connection(ours)
    return connection, Peer(theirs, script), lambda: connection.send(BIG, binary=True)


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_send_interrupted_at_every_switch_point(interruption: Any) -> None:
    total = count_switches(sending_scenario)
    assert total >= 2
    for at in injection_points(total):
        connection, peer, operation = sending_scenario()
        SwitchPoints(at, interruption).run(operation)
        connection.send("after")
        connection.close()
        frames, code = peer.finish()
        assert frames == [(2, BIG), (1, b"after")], f"interrupted at switch {at}"
        assert code == 1000
        connection.abort()


Scenario = tuple[Connection, Peer, Callable[[], Any]]


def receiver(trickle: Callable[[RawPeer], None], count: int) -> Scenario:
    """A connection whose peer runs ``trickle`` once the operation, receiving ``count``
    messages into ``connection.got``, waits; the peer then reads until the close."""
    ours, theirs = tcp_pair()
    got: list[Any] = []

    def script(peer: Peer) -> Any:
        peer.go.wait(10)  # the receiver is waiting already
        trickle(peer.raw)
        return read_all(peer.raw)

    connection = server_connection(ours)
    connection.got = got  # type: ignore[attr-defined]
    peer = Peer(theirs, script)

    def operation() -> None:
        peer.go.set()
        for _ in range(count):
            got.append(connection.receive())

    return connection, peer, operation


def receiving_scenario() -> Scenario:
    """Three messages and two pings, trickling in; the operation receives them."""

    def trickle(raw: RawPeer) -> None:
        for n in range(3):
            raw.send(client_frame(9, b"p%d" % n)[:3])  # a frame split across reads
            time.sleep(0.005)  # trickling in: the receiver waits (switches) each time
            raw.send(client_frame(9, b"p%d" % n)[3:] + client_frame(1, b"m%d" % n))
            time.sleep(0.005)

    return receiver(trickle, 3)


def large_receiving_scenario() -> Scenario:
    """A 256 KiB message trickling in (read into its own buffer once a quarter of it is
    there), then a small one; the operation receives both."""
    wire = client_frame(2, BIG) + client_frame(1, b"after")

    def trickle(raw: RawPeer) -> None:
        for start in range(0, len(wire), 32768):
            raw.send(wire[start : start + 32768])
            time.sleep(0.002)  # the receiver waits (switches) in between

    return receiver(trickle, 2)


RECEIVING = [
    pytest.param(
        receiving_scenario, ["m0", "m1", "m2"], [(10, b"p0"), (10, b"p1"), (10, b"p2")], id="small"
    ),
    pytest.param(large_receiving_scenario, [BIG, "after"], [], id="large"),
]


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
@pytest.mark.parametrize(("scenario", "messages", "pongs"), RECEIVING)
def test_receive_interrupted_at_every_switch_point(
    interruption: Any, scenario: Callable[[], Scenario], messages: list[Any], pongs: list[Any]
) -> None:
    total = count_switches(scenario)
    assert total >= 3
    for at in injection_points(total):
        connection, peer, operation = scenario()
        SwitchPoints(at, interruption).run(operation)
        got = connection.got  # type: ignore[attr-defined]
        while len(got) < len(messages):
            got.append(connection.receive(timeout=10))
        assert got == messages, f"interrupted at switch {at}"
        connection.close()
        frames, code = peer.finish()
        assert sorted(frames) == pongs
        assert code == 1000
        connection.abort()


def closing_scenario() -> tuple[Connection, Peer, Callable[[], Any]]:
    """``close()`` while a large message is still to be written."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        raw.sock = SlowSocket(raw.sock)  # type: ignore[assignment]
        return read_all(raw)

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    connection.send(BIG[:60000], binary=True)  # under the high-water mark: queued
    return connection, peer, lambda: connection.close(1001, "bye")


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
def test_close_interrupted_at_every_switch_point(interruption: Any) -> None:
    total = count_switches(closing_scenario)
    assert total >= 2
    for at in injection_points(total):
        connection, peer, operation = closing_scenario()
        SwitchPoints(at, interruption).run(operation)
        connection.close()  # idempotent: finishes what was interrupted, or nothing
        assert connection.closed
        frames, code = peer.finish()
        assert frames == [(2, BIG[:60000])], f"interrupted at switch {at}"
        assert code == 1001
        assert connection.close_code == 1001
        connection.abort()


def test_ping_never_blocks_and_its_pong_survives_an_interrupted_wait() -> None:
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        _, _, payload = raw.read_frame()
        peer.go.wait(10)
        raw.send(client_frame(10, payload))
        return read_all(raw)

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    points = SwitchPoints()
    pong = points.run(connection.ping)
    assert points.count == 0  # queueing a ping never switches
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            pong.get()
    peer.go.set()
    assert pong.get(timeout=10) >= 0  # the pong arrived and resolved it
    connection.close()
    assert peer.finish() == ([], 1000)
    connection.abort()
