"""Production behaviour: keepalive, send timeouts, connection limits, slow clients,
broadcast, and leaks after thousands of connections."""

from __future__ import annotations

import errno
import gc
import logging
import queue
import socket
import struct
import threading
import time
from typing import Any

import gevent
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import geventws
from geventws import Connection, ConnectionClosedError, Request
from geventws.examples.echo import handle as echo

from .test_client import FuzzServer
from .utils import RawClient, client_frame, wait_for


def test_keepalive_closes_dead_peer_with_1011(serve: Any, caplog: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        try:
            connection.receive()
        except ConnectionClosedError as exc:
            results.put((exc.code, exc.reason))

    server = serve(handler, ping_interval=0.1, ping_timeout=0.2)
    with caplog.at_level(logging.INFO, logger="geventws.server"):
        client = RawClient(server.port)  # completes the handshake, then plays dead
        try:
            assert results.get(timeout=10) == (1011, "keepalive ping timeout")
        finally:
            client.close()
    assert any("keepalive ping timeout" in r.message for r in caplog.records)


def test_keepalive_keeps_a_live_peer(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        results.put(connection.receive(timeout=10))

    server = serve(handler, ping_interval=0.05, ping_timeout=0.5)
    with connect(server.url) as ws:  # websockets answers pings by itself
        time.sleep(0.5)  # ten keepalive rounds
        ws.send("still here")
        assert results.get(timeout=10) == "still here"


def test_client_keepalive_detects_dead_server() -> None:
    server = FuzzServer()  # answers the handshake, then never answers pings
    ws = geventws.connect(
        f"ws://127.0.0.1:{server.port}/", ping_interval=0.1, ping_timeout=0.2, close_timeout=0.5
    )
    with pytest.raises(ConnectionClosedError) as info:
        ws.receive(timeout=10)
    assert info.value.code == 1011
    ws.close()


def test_send_timeout_closes_a_client_that_does_not_read(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        sent = 0
        try:
            while True:
                connection.send(b"x" * 65536, binary=True)  # blocks once the socket is full
                sent += 1
        except ConnectionClosedError as exc:
            results.put((exc.code, sent, connection.close_code))

    server = serve(handler, send_timeout=0.3)
    client = RawClient(server.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        code, sent, close_code = results.get(timeout=20)
    finally:
        client.close()
    assert code == 1008 and close_code == 1008
    assert sent < 1000  # it blocked long before 64 MiB


def test_max_connections_answers_503_and_stays_responsive(serve: Any) -> None:
    server = serve(echo, max_connections=2)
    with connect(server.url) as first, connect(server.url):
        with pytest.raises(InvalidStatus) as info:
            connect(server.url)
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"] == "5"
        first.send("served")
        assert first.recv(timeout=5) == "served"
    assert wait_for(lambda: server.server is not None and len(server.server._handlers) == 0, 15)
    with connect(server.url) as again:
        again.send("x")
        assert again.recv(timeout=5) == "x"


def test_slowloris_is_dropped(serve: Any) -> None:
    server = serve(echo, handshake_timeout=0.5)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" * 20
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        dropped = False
        for byte in request:  # one byte every 50 ms: 50 s for the whole head
            try:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        dropped = True
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
        assert dropped


def test_max_queue_high_and_low_water(serve: Any) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        seen.put((connection.settings.max_queue, connection.settings.max_queue_low))

    server = serve(handler, max_queue=(8, 2))
    with connect(server.url):
        assert seen.get(timeout=5) == (8, 2)


def test_broadcast_reaches_everyone_and_skips_slow_clients(serve: Any) -> None:
    rounds = 150  # 9 MB per client: more than any socket buffer holds for the slow one
    results: queue.Queue[Any] = queue.Queue()
    server = serve(echo)
    clients = [RawClient(server.port) for _ in range(10)]
    slow = RawClient(server.port)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert wait_for(lambda: server.server is not None and len(server.server.connections) == 11)
    received: queue.Queue[int] = queue.Queue()

    def read_all(client: RawClient) -> None:
        count = 0
        for _ in range(rounds):
            _, opcode, payload = client.read_frame()
            assert (opcode, len(payload)) == (1, 60000)
            count += 1
        received.put(count)

    readers = [threading.Thread(target=read_all, args=(c,), daemon=True) for c in clients]
    for reader in readers:
        reader.start()

    def push() -> None:
        connections = server.server.connections  # type: ignore[union-attr]
        counts = []
        for _ in range(rounds):
            counts.append(geventws.broadcast(connections, "x" * 60000))
            gevent.sleep(0.001)  # a ticker: other greenlets (the flushes) run in between
        results.put(counts)

    server.call(push)
    counts = results.get(timeout=60)
    assert counts[0] == 11
    assert counts[-1] == 10  # the slow client was skipped, the others were not held up
    assert [received.get(timeout=60) for _ in clients] == [rounds] * len(clients)
    for client in clients:
        client.send(client_frame(8, struct.pack("!H", 1000)))
        client.read_until_close()
        client.close()
    slow.close()


def test_broadcast_never_raises() -> None:
    class Broken:
        _transport = None

        def send_shared(self, *args: object, **kwargs: object) -> bool:
            raise RuntimeError("boom")

    assert geventws.broadcast([Broken()], "x") == 0  # type: ignore[list-item]


def test_broadcast_skips_closing_connections_and_masks_client_frames(serve: Any) -> None:
    """A server connection whose closing handshake started is skipped (nothing after
    its close frame); a client connection in the same broadcast gets its own masked
    frame, which a server accepts."""
    done: queue.Queue[tuple[int, Any]] = queue.Queue()
    echo_server = serve(echo)

    def handler(connection: Connection, request: Request) -> None:
        if request.path == "/closing":
            connection.receive(timeout=10)
            connection.close()
            return
        connection.receive(timeout=10)
        connections = list(server.server.connections)  # type: ignore[union-attr]
        with geventws.connect(echo_server.url) as client:
            count = geventws.broadcast([*connections, client], "x")
            done.put((count, client.receive(timeout=10)))
        connection.receive(timeout=30)

    server = serve(handler)
    closing = RawClient(server.port, "/closing")
    assert wait_for(lambda: server.server is not None and len(server.server.connections) == 1)
    closing.send(client_frame(1, b"close"))
    assert closing.read_frame()[1] == 8  # the server's close frame: it is closing
    publisher = RawClient(server.port, "/publisher")
    assert wait_for(lambda: len(server.server.connections) == 2)  # type: ignore[union-attr]
    publisher.send(client_frame(1, b"go"))
    assert done.get(timeout=10) == (2, "x")  # the publisher and the client
    assert publisher.read_frame()[1:] == (1, b"x")
    closing.send(client_frame(8, struct.pack("!H", 1000)))
    assert closing.read_until_close() == ([], None)  # nothing after the close frame
    for client in (closing, publisher):
        client.close()


def test_broadcasts_in_one_turn_go_out_together_and_in_order(serve: Any) -> None:
    """Everything broadcast before the broadcasting greenlet yields reaches a client in
    one write, in order with the connection's own messages."""
    done: queue.Queue[list[int]] = queue.Queue()
    early: queue.Queue[bytes] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        if request.path == "/publisher":
            connection.receive(timeout=10)
            connections = list(server.server.connections)  # type: ignore[union-attr]
            counts = [geventws.broadcast(connections, "one")]
            # The listener's end, peeked from here: nothing is written before a yield.
            with listener.sock.dup() as peek:
                peek.setblocking(False)
                try:
                    early.put(peek.recv(64, socket.MSG_PEEK))
                except BlockingIOError:
                    early.put(b"")
            connection.send("two")  # only to the publisher, between two broadcasts
            counts.append(geventws.broadcast(connections, "three"))
            done.put(counts)
        connection.receive(timeout=30)

    server = serve(handler)
    listener = RawClient(server.port)
    publisher = RawClient(server.port, "/publisher")
    assert wait_for(lambda: server.server is not None and len(server.server.connections) == 2)
    publisher.send(client_frame(1, b"go"))
    assert done.get(timeout=10) == [2, 2]
    assert early.get(timeout=10) == b""
    # One recv gets both frames: they were written by one send.
    assert listener.sock.recv(65536) == b"\x81\x03one\x81\x05three"
    assert [publisher.read_frame()[2] for _ in range(3)] == [b"one", b"two", b"three"]
    for client in (listener, publisher):
        client.close()


def test_broadcasts_to_overlapping_sets_in_one_turn_reach_each_client_exactly(
    serve: Any,
) -> None:
    """Within one turn, clients that got the same frames share a write and the others
    get theirs (a client with one frame or several, the same as another's or not):
    each client receives exactly what was broadcast to it, in order."""
    done: queue.Queue[list[int]] = queue.Queue()
    by_path: dict[str, Connection] = {}

    def handler(connection: Connection, request: Request) -> None:
        by_path[request.path] = connection
        if request.path == "/publisher":
            connection.receive(timeout=10)
            a, b, c, d = (by_path[path] for path in ("/a", "/b", "/c", "/d"))
            counts = [geventws.broadcast([a, b, c], "one"), geventws.broadcast([b, d], "two")]
            gevent.sleep(0)  # the turn ends: its batch is written
            counts.append(geventws.broadcast([c], "three"))
            counts.append(geventws.broadcast([a, b, c, d], "four"))
            gevent.sleep(0)
            counts.append(geventws.broadcast([a, b, c, d], "end"))
            done.put(counts)
        connection.receive(timeout=30)

    server = serve(handler)
    clients = start_publishing(server, "/a", "/b", "/c", "/d")
    assert done.get(timeout=10) == [3, 2, 1, 4, 4]
    # Nothing more from the first two turns: the next frame is the later "end".
    expected = {
        "/a": [b"one", b"four", b"end"],
        "/b": [b"one", b"two", b"four", b"end"],
        "/c": [b"one", b"three", b"four", b"end"],
        "/d": [b"two", b"four", b"end"],
    }
    for path, client in zip(expected, clients[:4], strict=True):
        assert [client.read_frame()[2] for _ in expected[path]] == expected[path], path
    for client in clients:
        client.close()


def start_publishing(server: Any, *paths: str) -> list[RawClient]:
    """Connect a client on each of ``paths`` in turn, then one on "/publisher", and
    have the publisher say "go"; return them all, the publisher last."""
    clients: list[RawClient] = []

    def all_connected() -> bool:
        return server.server is not None and len(server.server.connections) == len(clients)

    for path in [*paths, "/publisher"]:
        clients.append(RawClient(server.port, path))
        assert wait_for(all_connected)
    clients[-1].send(client_frame(1, b"go"))
    return clients


def test_a_burst_over_the_limit_in_one_turn_reaches_a_reading_client(serve: Any) -> None:
    """Broadcasts in one turn of the loop that together pass ``limit`` are not held
    against a client that reads: the batch is written out as it passes the limit, and
    no message is skipped (the soak found gaps for fresh subscribers)."""
    done: queue.Queue[list[int]] = queue.Queue()
    sizes = [40000, 40000, 40000, 30]

    def handler(connection: Connection, request: Request) -> None:
        if request.path == "/publisher":
            connection.receive(timeout=10)
            connections = [
                c
                for c in server.server.connections  # type: ignore[union-attr]
                if c.request is not None and c.request.path == "/listener"
            ]
            done.put([geventws.broadcast(connections, "x" * size) for size in sizes])
        connection.receive(timeout=30)

    server = serve(handler)
    listener, publisher = start_publishing(server, "/listener")
    assert done.get(timeout=10) == [1, 1, 1, 1]
    assert [len(listener.read_frame()[2]) for _ in sizes] == sizes
    for client in (listener, publisher):
        client.close()


def test_a_dead_subscriber_found_while_making_room_stops_no_delivery(serve: Any) -> None:
    """Making room for a burst may find a dead socket, and ending that connection takes
    it out of its topic at once, in the middle of the publish: the publish neither
    raises nor loses the message for the others."""
    done: queue.Queue[Any] = queue.Queue()
    payloads = [str(n) * 50000 for n in range(5)]

    def handler(connection: Connection, request: Request) -> None:
        connection.subscribe("t")
        if request.path == "/publisher":
            connection.receive(timeout=10)
            (victim,) = [
                c
                for c in server.server.connections  # type: ignore[union-attr]
                if c.request is not None and c.request.path == "/dead"
            ]
            # What a reset peer looks like to the next write, before the reader sees it.
            victim._transport.writer.raw.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            try:
                done.put([server.server.publish("t", p) for p in payloads])  # type: ignore[union-attr]
            except Exception as exc:  # the failure this test is about
                done.put(exc)
        connection.receive(timeout=30)

    server = serve(handler)
    reader, dead, publisher = start_publishing(server, "/reader", "/dead")
    counts = done.get(timeout=10)
    assert isinstance(counts, list), counts
    assert counts[:2] == [3, 3] and counts[-1] == 2  # the dead one is gone once found
    assert [reader.read_frame()[2].decode() for _ in payloads] == payloads
    for client in (reader, dead, publisher):
        client.close()


def test_broadcast_to_a_connection_aborted_before_the_write(serve: Any) -> None:
    """A connection that ends between the broadcast and its write is skipped: the others
    get the message, nothing raises, nothing leaks."""
    done: queue.Queue[int] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        if request.path == "/publisher":
            connection.receive(timeout=10)
            connections = sorted(
                server.server.connections,  # type: ignore[union-attr]
                key=lambda c: c.request.path,
            )
            count = geventws.broadcast(connections, "x")
            connections[0].abort()  # "/doomed", before this greenlet yields
            done.put(count)
        connection.receive(timeout=30)

    server = serve(handler)
    doomed, publisher = start_publishing(server, "/doomed")
    assert done.get(timeout=10) == 2
    assert publisher.read_frame()[1:] == (1, b"x")
    with pytest.raises((EOFError, ConnectionResetError)):
        doomed.read_frame()
    for client in (doomed, publisher):
        client.close()


def test_thousands_of_connections_leave_nothing_behind(serve: Any) -> None:
    counts: queue.Queue[int] = queue.Queue()
    server = serve(echo)
    for i in range(1500):
        client = RawClient(server.port)
        client.send(client_frame(2, b"ping %d" % i))
        if i % 3 == 0:  # clean close
            assert client.read_frame()[2] == b"ping %d" % i
            client.send(client_frame(8, struct.pack("!H", 1000)))
            client.read_until_close()
        elif i % 3 == 1:  # abrupt: no close frame
            assert client.read_frame()[2] == b"ping %d" % i
        else:  # abrupt, in the middle of a frame
            client.send(client_frame(2, b"y" * 1000)[:50])
        client.close()
    assert wait_for(
        lambda: (
            server.server is not None
            and not server.server.connections
            and len(server.server._handlers) == 0
        ),
        30,
    )

    def count() -> None:
        gc.collect()
        counts.put(sum(1 for o in gc.get_objects() if type(o) is Connection))

    server.call(count)
    assert counts.get(timeout=10) == 0
    # The fixture then checks file descriptors and greenlets.


def _send_nowait(implementation: str) -> Any:
    """The compiled batch of non-blocking sends, or its pure-Python fallback."""
    from geventws import _sockets as module

    if implementation == "python":
        return module._send_nowait_python
    if module.send_nowait is module._send_nowait_python:
        pytest.skip("the compiled accelerator is not built")
    return module.send_nowait


@pytest.mark.parametrize("implementation", ["compiled", "python"])
def test_send_nowait_reports_sent_would_block_and_errors(implementation: str) -> None:
    """The batch of non-blocking sends behind broadcast(), in both implementations."""
    send_nowait = _send_nowait(implementation)
    ok, ok_peer = socket.socketpair()
    full, full_peer = socket.socketpair()
    dead, dead_peer = socket.socketpair()
    closed, _ = socket.socketpair()
    try:
        for sock in (ok, full, dead):
            sock.setblocking(False)
        while True:  # fill one socket's buffers
            try:
                full.send(b"x" * 65536)
            except BlockingIOError:
                break
        dead_peer.close()
        closed_fd = closed.fileno()
        closed.close()
        fds = [ok.fileno(), full.fileno(), dead.fileno(), closed_fd]
        incomplete = dict(send_nowait(fds, b"hello"))
        assert ok_peer.recv(10) == b"hello" and 0 not in incomplete  # complete: not listed
        assert incomplete[1] == 0  # would block
        assert incomplete[2] in (-errno.EPIPE, -errno.ECONNRESET)
        assert incomplete[3] == -errno.EBADF
    finally:
        for sock in (ok, ok_peer, full, full_peer, dead):
            sock.close()


@pytest.mark.parametrize("implementation", ["compiled", "python"])
def test_send_nowait_refuses_descriptors_out_of_range(implementation: str) -> None:
    """A descriptor over INT_MAX is refused, never truncated into another one (2**32 + n
    used to be written to descriptor n)."""
    send_nowait = _send_nowait(implementation)
    ours, peer = socket.socketpair()
    try:
        ours.setblocking(False)
        peer.setblocking(False)
        for bad in (2**32 + ours.fileno(), -1, 2**31):
            with pytest.raises(ValueError, match="out of range"):
                send_nowait([ours.fileno(), bad], b"hello")
        with pytest.raises(BlockingIOError):
            peer.recv(10)  # nothing was sent, not even to the valid descriptor
    finally:
        ours.close()
        peer.close()
