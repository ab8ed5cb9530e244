"""The server and the blocking connection, against independent clients on loopback.

Clients: websockets' sync client, websocket-client and raw sockets (the HTTP side, with
``requests`` too, is in test_server_http.py). Handlers run in the server's thread and
report through thread-safe queues. Tests of the handler's own API, which need no
independent peer, use :class:`geventws.testing.TestClient` (the handler on the test's
hub, reporting through plain lists).
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
from typing import Any

import gevent
import pytest
import websocket  # websocket-client
from websockets.exceptions import ConnectionClosedError as WsClosedError
from websockets.exceptions import ConnectionClosedOK as ConnectionClosedOKWs
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from geventws import (
    Connection,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    Request,
)
from geventws.examples.echo import handle as echo
from geventws.testing import TestClient

from .utils import RawClient, ThrowawayCA, client_frame, cycles_left, wait_for


def test_echo_with_websockets_client(serve: Any) -> None:
    server = serve(echo)
    with connect(server.url) as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff")
        assert ws.recv() == b"\x00\xff"
        ws.send(["frag", "ment"])
        assert ws.recv() == "fragment"
        big = bytes(range(256)) * 4000
        ws.send(big)
        assert ws.recv() == big
        assert ws.ping().wait(5)


def test_echo_with_websocket_client(serve: Any) -> None:
    server = serve(echo)
    ws = websocket.create_connection(server.url, timeout=10)
    try:
        ws.send("text")
        assert ws.recv() == "text"
        ws.send_binary(b"\x01\x02")
        assert ws.recv() == b"\x01\x02"
        ws.ping(b"p")
        opcode, data = ws.recv_data(control_frame=True)
        assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"p")
    finally:
        ws.close()
    assert ws.status == 1000 or ws.sock is None


def test_request_exposes_the_handshake(serve: Any) -> None:
    seen: queue.Queue[Request] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        seen.put(request)
        connection.send("ok")

    server = serve(handler)
    with connect(
        server.url + "/room%201?a=1&a=2",
        origin="https://example.com",
        additional_headers={"Cookie": "sid=42; theme=dark", "X-Token": "t"},
        subprotocols=["chat", "superchat"],
    ) as ws:
        assert ws.recv() == "ok"
    request = seen.get(timeout=5)
    assert request.path == "/room 1"
    assert request.args.getlist("a") == ["1", "2"]
    assert request.origin == "https://example.com"
    assert request.headers["x-token"] == "t"
    assert request.cookies == {"sid": "42", "theme": "dark"}
    assert request.subprotocols == ["chat", "superchat"]
    assert request.remote_address is not None and request.remote_address[0] == "127.0.0.1"


def test_reject_answers_http_status_and_never_upgrades(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        if request.origin != "https://good.example":
            return connection.reject(403, "go away", {"X-Why": "origin"})
        connection.send("welcome")
        return None

    server = serve(handler)
    with pytest.raises(InvalidStatus) as info:
        connect(server.url, origin="https://evil.example")
    assert info.value.response.status_code == 403
    assert info.value.response.headers["X-Why"] == "origin"
    assert info.value.response.body == b"go away"
    with connect(server.url, origin="https://good.example") as ws:
        assert ws.recv() == "welcome"


def test_accept_and_reject_at_the_wrong_time_raise() -> None:
    errors: list[str] = []

    def handler(connection: Connection, request: Request) -> None:
        connection.accept(headers={"X-Extra": "1"})
        for call in (connection.accept, lambda: connection.reject(403)):
            try:
                call()
            except InvalidState as exc:
                errors.append(str(exc))
        connection.send("done")

    with TestClient(handler) as client, client.connect() as ws:
        assert ws.response_headers["X-Extra"] == "1"
        assert ws.receive(timeout=5) == "done"
    assert errors == [
        "cannot accept: handshake already accepted",
        "cannot reject: handshake already accepted",
    ]


def test_origins_option_refuses_with_403(serve: Any) -> None:
    server = serve(echo, origins=["https://a.example", None])
    with pytest.raises(InvalidStatus) as info:
        connect(server.url, origin="https://b.example")
    assert info.value.response.status_code == 403
    with connect(server.url, origin="https://a.example") as ws:
        ws.send("x")
        assert ws.recv() == "x"
    with connect(server.url) as ws:  # no Origin: allowed by None
        ws.send("y")
        assert ws.recv() == "y"


def test_subprotocol_picked_by_server_preference(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.accept()  # the subprotocol is known once the handshake is answered
        connection.send(str(connection.subprotocol))

    server = serve(handler, subprotocols=["v2", "v1"])
    with connect(server.url, subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert ws.recv() == "v2"
    with connect(server.url, subprotocols=["other"]) as ws:
        assert ws.subprotocol is None
        assert ws.recv() == "None"


def test_handler_chooses_subprotocol(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        try:
            connection.accept(subprotocol="not-offered")
        except ValueError:
            connection.accept(subprotocol=request.subprotocols[-1])
        connection.send("ok")

    server = serve(handler)
    with connect(server.url, subprotocols=["a", "b"]) as ws:
        assert ws.subprotocol == "b"
        assert ws.recv() == "ok"


def test_handler_return_closes_with_1000(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.send("bye")

    server = serve(handler)
    with connect(server.url) as ws:
        assert ws.recv() == "bye"
        with pytest.raises(ConnectionClosedOKWs):
            ws.recv(timeout=5)
        assert ws.protocol.close_code == 1000


@pytest.mark.parametrize(
    "ending", ["client-closes", "handler-returns", "handler-raises", "reset", "send-fails", "1002"]
)
def test_a_finished_connection_is_freed_without_the_garbage_collector(
    serve: Any, ending: str
) -> None:
    """Once released, no part of a connection is in a reference cycle: reference counting
    frees them, and the cycle collector finds none of them (it used to collect each
    connection: about 10 µs of the 170 a short one costs)."""

    def handler(connection: Connection, request: Request) -> None:
        if ending == "handler-returns":
            connection.send("bye")
            return
        if ending == "handler-raises":  # logged, and the client gets 1011
            connection.receive()
            raise RuntimeError("bug")
        if ending == "send-fails":  # the client resets once it has "ready"
            connection.send("ready")
            for _ in range(1000):  # a send that must wait fails (raises) on the reset
                connection.send(bytes(100_000))
        for message in connection:
            connection.send(message)

    server = serve(handler)
    with cycles_left() as collect:
        for _ in range(3):
            if ending in ("client-closes", "handler-returns", "handler-raises"):
                with connect(server.url) as ws:
                    if ending == "client-closes":
                        ws.send("x")
                        assert ws.recv(timeout=10) == "x"
                    elif ending == "handler-returns":
                        assert ws.recv(timeout=10) == "bye"
                    else:
                        ws.send("x")
                        with pytest.raises(WsClosedError):
                            ws.recv(timeout=10)
                        assert ws.protocol.close_code == 1011
            else:
                raw = RawClient(server.port)
                assert raw.status == 101
                if ending == "send-fails":
                    assert raw.read_frame()[2] == b"ready"
                if ending in ("reset", "send-fails"):
                    raw.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                else:  # an unmasked frame: the server fails the connection with 1002
                    raw.sock.sendall(client_frame(1, b"hello", mask=None))
                    assert raw.read_until_close()[1] == 1002
                raw.close()
        assert wait_for(lambda: not server.server._handlers.running, 10)  # all released
        assert collect() == set()


def test_handler_exception_is_logged_and_closes_1011(serve: Any, caplog: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.receive()
        raise RuntimeError("boom")

    server = serve(handler)
    with caplog.at_level(logging.ERROR, logger="geventws.server"):
        with connect(server.url + "/room?token=SECRET") as ws:
            ws.send("trigger")
            with pytest.raises(WsClosedError):
                ws.recv(timeout=5)
            assert ws.protocol.close_code == 1011
        assert wait_for(lambda: any("handler failed" in r.message for r in caplog.records))
    record = next(r for r in caplog.records if "handler failed" in r.message)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "boom" in str(record.exc_info[1])
    assert record.message.endswith(" /room")  # the query string left out


def test_a_bug_serving_a_connection_is_logged_and_its_socket_closed(
    serve: Any, caplog: Any
) -> None:
    """An exception escaping the server's own per-connection code (fault injected in
    place of ``_serve_connection``) is logged, the socket is closed and the greenlet is
    no longer counted; the server goes on serving."""
    server = serve(echo)
    assert server.server is not None
    real = server.server._serve_connection
    calls: list[int] = []

    def buggy(sock: Any, address: Any) -> None:
        if not calls:
            calls.append(1)
            raise RuntimeError("bug in serving")
        real(sock, address)

    server.server._serve_connection = buggy
    with caplog.at_level(logging.ERROR, logger="geventws.server"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            assert raw.recv(1) == b""  # closed by the server, not left open
        assert wait_for(
            lambda: any("unexpected error serving" in r.message for r in caplog.records)
        )
    record = next(r for r in caplog.records if "unexpected error serving" in r.message)
    assert record.exc_info is not None and "bug in serving" in str(record.exc_info[1])
    assert wait_for(lambda: len(server.server._handlers) == 0)
    with connect(server.url) as ws:  # the next connection is served
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"


def test_handler_exception_before_handshake_answers_500(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        raise ValueError("broken before accept")

    server = serve(handler)
    with pytest.raises(InvalidStatus) as info:
        connect(server.url)
    assert info.value.response.status_code == 500


def test_receive_timeout_leaves_connection_usable() -> None:
    results: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        try:
            connection.receive(timeout=0.05)
        except TimeoutError as exc:
            results.append(type(exc))
        connection.send("ready")
        results.append(connection.receive(timeout=10))

    with TestClient(handler) as client, client.connect() as ws:
        assert ws.receive(timeout=5) == "ready"
        ws.send("late")
    assert results == [TimeoutError, "late"]


def test_iteration_ends_quietly_on_normal_close() -> None:
    results: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        results.append(list(connection))
        results.append((connection.close_code, connection.close_reason, connection.closed))

    with TestClient(handler) as client, client.connect() as ws:
        ws.send("a")
        ws.send(b"b", binary=True)
        ws.close(1001, "leaving")
    assert results == [["a", b"b"], (1001, "leaving", True)]


def test_iteration_raises_on_abnormal_close(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        try:
            for _ in connection:
                pass
        except ConnectionClosedError as exc:
            results.put(exc.code)
        else:
            results.put("ended quietly")

    server = serve(handler)
    client = RawClient(server.port)
    client.send(client_frame(1, b"x"))
    client.close()  # no closing handshake: 1006
    assert results.get(timeout=5) == 1006


def test_receive_after_close_raises_connection_closed_ok() -> None:
    results: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        for _ in connection:
            pass
        for call in (connection.receive, lambda: connection.send("x")):
            try:
                call()
            except ConnectionClosedOK as exc:
                results.append(exc.code)

    with TestClient(handler) as client, client.connect() as ws:
        ws.send("x")
    assert results == [1000, 1000]


def test_max_size_closes_1009(serve: Any) -> None:
    server = serve(echo, max_size=1000)
    with connect(server.url, max_size=None) as ws:
        ws.send(b"x" * 1000)
        assert ws.recv() == b"x" * 1000
        ws.send(b"x" * 1001)
        with pytest.raises(WsClosedError):
            ws.recv(timeout=5)
        assert ws.protocol.close_code == 1009


def test_send_bytes_as_text_must_be_utf8(serve: Any) -> None:
    results: queue.Queue[str] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        try:
            connection.send(b"\xff")
        except ValueError as exc:
            results.put(str(exc))
        connection.send(b"\xff", binary=True)
        connection.send("€".encode())
        connection.send(bytearray(b"ba"), binary=True)
        connection.send("s", binary=True)

    server = serve(handler)
    with connect(server.url) as ws:
        assert [ws.recv(), ws.recv(), ws.recv(), ws.recv()] == [b"\xff", "€", b"ba", b"s"]
    assert "binary=True" in results.get(timeout=5)


def test_concurrent_senders_never_interleave(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        def burst(i: int) -> None:
            for j in range(50):
                connection.send(f"{i}:{j}:" + "x" * (i * 3000))
                gevent.sleep(0)

        gevent.joinall([gevent.spawn(burst, i) for i in range(10)])

    server = serve(handler)
    seen: dict[int, list[int]] = {i: [] for i in range(10)}
    with connect(server.url) as ws:
        for _ in range(500):
            i, j, pad = ws.recv(timeout=10).split(":")
            assert pad == "x" * (int(i) * 3000)
            seen[int(i)].append(int(j))
    assert all(seen[i] == list(range(50)) for i in range(10))


def test_ping_returns_latency_waiter(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        waiter = connection.ping()
        results.put(waiter.get(timeout=5))
        waiter2 = connection.ping(b"custom")
        results.put(waiter2.get(timeout=5))
        connection.send("done")

    server = serve(handler)
    with connect(server.url) as ws:
        assert ws.recv(timeout=10) == "done"
    for _ in range(2):
        latency = results.get(timeout=5)
        assert isinstance(latency, float) and latency >= 0


def test_push_only_handler_still_answers_pings_and_sees_close(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        # Never receives: the reader greenlet must answer pings and see the close.
        n = 0
        try:
            while True:
                connection.send(f"tick {n}")
                n += 1
                gevent.sleep(0.01)
        except ConnectionClosedOK as exc:
            results.put(exc.code)

    server = serve(handler)
    with connect(server.url) as ws:
        assert ws.recv(timeout=5).startswith("tick")
        assert ws.ping(b"alive").wait(5)
    assert results.get(timeout=10) == 1000


def test_slow_handler_pushes_back_on_the_client(serve: Any) -> None:
    results: queue.Queue[Any] = queue.Queue()
    release = queue.Queue()  # type: ignore[var-annotated]

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        while release.empty():  # a handler busy elsewhere
            gevent.sleep(0.01)
        results.put(len(connection._transport.reader.messages))  # type: ignore[union-attr]
        count = 0
        for _ in connection:
            count += 1
        results.put(count)

    server = serve(handler, max_queue=4)
    client = RawClient(server.port)
    frame = client_frame(2, b"z" * 65536)
    client.sock.setblocking(False)
    sent = 0
    blocked = False
    pending = b""
    for _ in range(2000):  # up to 128 MiB: far more than socket buffers hold
        try:
            pending = pending or frame
            n = client.sock.send(pending)
            pending = pending[n:]
            if not pending:
                sent += 1
        except BlockingIOError:
            # TCP pushes back; make sure it is not a transient stall.
            if wait_for(lambda: _writable(client.sock), timeout=0.5):
                continue
            blocked = True
            break
    assert blocked, "the server kept reading although its handler was not"
    assert sent < 1500
    release.put(True)
    queued = results.get(timeout=10)
    # Reading stops once max_queue messages wait; one read (256 KiB) may complete a few more.
    assert queued <= 4 + 262144 // 65536
    client.sock.setblocking(True)
    if pending:
        client.sock.sendall(pending)
        sent += 1
    client.send(client_frame(8, struct.pack("!H", 1000)))
    assert results.get(timeout=20) == sent
    client.read_until_close()
    client.close()


def _writable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([], [sock], [], 0)[1])


def test_server_stop_closes_connections_with_1001(serve: Any) -> None:
    server = serve(echo)
    with connect(server.url) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        server.stop()
        with pytest.raises(ConnectionClosedOKWs):
            ws.recv(timeout=5)
        assert ws.protocol.close_code == 1001


def test_tls(serve: Any) -> None:
    tls = ThrowawayCA()
    server = serve(echo, ssl_context=tls.server_context)
    with connect(f"wss://127.0.0.1:{server.port}", ssl=tls.client_context) as ws:
        ws.send("secure")
        assert ws.recv() == "secure"
        big = b"b" * 300000
        ws.send(big)
        assert ws.recv() == big


def test_applications_may_attach_attributes_to_connections() -> None:
    seen: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        connection.user = request.args.get("user")  # type: ignore[attr-defined]
        seen.append(connection.user)  # type: ignore[attr-defined]

    with TestClient(handler) as client, client.connect("/?user=ann"):
        pass
    assert seen == ["ann"]
