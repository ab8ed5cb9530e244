"""WebSockets beside WSGI applications on gevent.pywsgi, against independent clients.

requests speaks HTTP to the WSGI routes and websockets' client the WebSocket routes,
on the same port at the same time; raw sockets check keep-alive around an upgrade.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import os
import socket
import struct
from typing import Any

import pytest
import requests
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from websockets.exceptions import ConnectionClosedError as WsClosedError
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

from geventws.wsgi import WebSocketHandler, WebSocketMiddleware, request_from_environ
from geventws.wsgi import middleware as wsgi_middleware

from . import wsgi_apps
from .utils import client_frame, wait_for


class Collect(io.StringIO):
    """pywsgi's error log, kept for assertions (nothing should land there)."""


def pywsgi(serve: Any, app: Any, **options: Any) -> Any:
    """A pywsgi server in its own thread; with a pool, so that stopping it ends idle
    keep-alive connections too (the leak check then sees every greenlet gone)."""
    errors = Collect()
    server = serve(app, factory=WSGIServer, log=None, error_log=errors, spawn=Pool(), **options)
    server.errors = errors
    return server


def upgrade_request(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes, bytes]:
    """Status, head and body (by Content-Length) of one HTTP response."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, "connection closed"
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buffer) < length:
        buffer += sock.recv(65536)
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(head.split(b" ")[1]), head, body


def read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    while len(buffer) < 2:
        buffer += sock.recv(65536)
    length, start = buffer[1] & 0x7F, 2
    if length == 126:
        length, start = struct.unpack("!H", bytes(buffer[2:4]))[0], 4
    while len(buffer) < start + length:
        buffer += sock.recv(65536)
    opcode, payload = buffer[0] & 0x0F, bytes(buffer[start : start + length])
    del buffer[: start + length]
    return opcode, payload


def test_http_and_websocket_on_one_port_at_the_same_time(serve: Any) -> None:
    server = pywsgi(serve, wsgi_apps.app)
    with connect(server.url + "/ws") as ws:
        ws.send("first")
        assert ws.recv(timeout=10) == "first"
        # HTTP requests while the WebSocket is open, on the same port.
        with requests.Session() as session:
            for _ in range(3):
                response = session.get(server.http_url + "/hello", timeout=10)
                assert response.status_code == 200 and response.text == "hello from WSGI"
            posted = session.post(server.http_url + "/echo-body", data=b"x" * 5000, timeout=10)
            assert posted.content == b"x" * 5000
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=10) == b"\x00\x01" * 40000
    assert server.errors.getvalue() == ""


def test_request_exposes_environ_cookies_and_compression(serve: Any) -> None:
    server = pywsgi(serve, wsgi_apps.app)
    with connect(
        server.url + "/info?room=a%20b&room=c",
        additional_headers={"Cookie": "session=s3cr3t; other=1"},
    ) as ws:
        seen = json.loads(ws.recv(timeout=10))
        assert seen == {
            "path": "/info",
            "args": {"room": "a b"},
            "cookie": "s3cr3t",
            "server": seen["server"],
            "extensions": "permessage-deflate; client_max_window_bits=12",
        }
        assert "gevent" in seen["server"]
        ws.send("compressed " * 100)
        assert ws.recv(timeout=10) == "compressed " * 100


def test_keep_alive_before_and_after_a_rejected_upgrade(serve: Any) -> None:
    """Refusals are ordinary WSGI responses: the HTTP connection stays usable."""
    server = pywsgi(serve, wsgi_apps.app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, buffer)[0] == 200
        sock.sendall(upgrade_request("/info?reject=1"))
        status, _, body = read_response(sock, buffer)
        assert (status, body) == (403, b"go away")
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade
        status, head, _ = read_response(sock, buffer)
        assert status == 426 and b"Upgrade: websocket" in head
        sock.sendall(upgrade_request("/ws").replace(b"Sec-WebSocket-Key", b"X-Key"))
        assert read_response(sock, buffer)[0] == 400
        # Then a real upgrade on the same connection, with a frame in the same packet:
        # the bytes pywsgi buffered past the request reach the WebSocket.
        sock.sendall(upgrade_request("/ws", "Connection: Upgrade\r\n") + client_frame(1, b"hi"))
        status, head, _ = read_response(sock, buffer)
        assert status == 101 and head.count(b"\r\nUpgrade: websocket") == 1
        assert read_frame(sock, buffer) == (1, b"hi")
        sock.sendall(client_frame(8, struct.pack("!H", 1000)))
        assert read_frame(sock, buffer) == (8, struct.pack("!H", 1000))
        # The server closed: no second HTTP response, no more reading.
        rest = sock.recv(65536)
        assert rest == b"" and buffer == bytearray()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(upgrade_request("/ws").replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, _, body = read_response(sock, bytearray())
        assert status == 400 and b"HTTP/1.1" in body
    assert server.errors.getvalue() == ""


def test_handler_failures(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = pywsgi(serve, wsgi_apps.app)
    with caplog.at_level(logging.ERROR, logger="geventws.wsgi"):
        with pytest.raises(InvalidStatus) as info:
            connect(server.url + "/info?fail=before", open_timeout=10)
        assert info.value.response.status_code == 500
        with connect(server.url + "/info?fail=after") as ws:
            ws.recv(timeout=10)
            with pytest.raises(WsClosedError) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    failures = [r.message for r in caplog.records if r.message.startswith("handler failed")]
    assert len(failures) == 2
    assert all(failure.endswith(" /info") for failure in failures)  # no query string
    # The server keeps serving.
    assert requests.get(server.http_url + "/hello", timeout=10).status_code == 200
    # The records' tracebacks hold pywsgi's socket reader: drop them while the server's
    # loop exists (the fixture destroys it), or the reader is closed on a dead loop.
    caplog.clear()


def test_not_found_and_origin_check(serve: Any) -> None:
    middleware = WebSocketMiddleware(None, {"/ws": wsgi_apps.echo}, origins=["https://ok"])
    server = pywsgi(serve, middleware)
    assert requests.get(server.http_url + "/other", timeout=10).status_code == 404
    with pytest.raises(InvalidStatus) as info:
        connect(server.url + "/ws", origin="https://evil", open_timeout=10)
    assert info.value.response.status_code == 403
    with connect(server.url + "/ws", origin="https://ok") as ws:
        ws.send("ok")
        assert ws.recv(timeout=10) == "ok"


def test_server_that_cannot_hand_over_the_socket(caplog: pytest.LogCaptureFixture) -> None:
    """Any other WSGI server (here a bare environ with a BytesIO input): 500 and a log
    line that says which server to use."""
    middleware = WebSocketMiddleware(None, wsgi_apps.echo)
    key = base64.b64encode(os.urandom(16)).decode()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ws",
        "HTTP_HOST": "x",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": key,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "wsgi.input": io.BytesIO(),
    }
    statuses: list[str] = []
    with caplog.at_level(logging.ERROR, logger="geventws.wsgi"):
        body = middleware(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["500 Internal Server Error"] and b"".join(body)
    assert "GeventWebSocketWorker" in caplog.text


def test_request_from_environ() -> None:
    head, request = request_from_environ(
        {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "/app",
            "PATH_INFO": "/a b",
            "QUERY_STRING": "x=1",
            "HTTP_SEC_WEBSOCKET_PROTOCOL": "chat, v2",
            "REMOTE_ADDR": "10.0.0.1",
            "REMOTE_PORT": "5000",
        }
    )
    assert head.target == "/app/a%20b?x=1" and request.path == "/app/a b"
    assert request.subprotocols == ["chat", "v2"]
    assert request.remote_address == ("10.0.0.1", 5000)
    assert request.headers["sec-websocket-protocol"] == "chat, v2"


# -- gevent-websocket applications, unchanged -----------------------------------------


@pytest.mark.parametrize("handler", ["geventws", "gevent-websocket"])
def test_gevent_websocket_app_runs_unchanged(serve: Any, handler: str) -> None:
    """The same application on gevent-websocket's handler and on ours."""
    if handler == "geventws":
        handler_class = WebSocketHandler
    else:
        from geventwebsocket.handler import WebSocketHandler as handler_class
    server = pywsgi(serve, wsgi_apps.legacy_app, handler_class=handler_class)
    assert requests.get(server.http_url + "/", timeout=10).text == "plain"
    with connect(server.url + "/anything", compression=None) as ws:
        ws.send("text")
        assert ws.recv(timeout=10) == "text"
        ws.send(b"\x00binary")
        assert ws.recv(timeout=10) == b"\x00binary"
        ws.send("bye")
        with pytest.raises((WsClosedError, ConnectionClosedOK)):
            ws.recv(timeout=10)
        code = ws.close_code
    if handler == "geventws":
        assert code == 4000 and ws.close_reason == "see you"
    else:
        # gevent-websocket's close() never sends the code on Python 3 (its documented
        # bug, one reason to migrate): the client sees no status.
        assert code != 4000


def test_gevent_websocket_app_sees_none_on_client_close(serve: Any) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ws = environ["wsgi.websocket"]
        seen.append((ws.path, ws.origin, ws.version, ws.closed))
        seen.append(ws.receive())
        seen.append(ws.closed)
        return []

    server = pywsgi(serve, app, handler_class=WebSocketHandler)
    with connect(server.url + "/room", origin="https://site"):
        pass
    assert seen == [("/room", "https://site", "13", False), None, True]


def test_a_failed_handshake_answer_closes_with_1006() -> None:
    """If the WSGI server can't write the 101, the connection is closed (1006), not
    half-open: sends raise, close() is a no-op, the handler's failure path is quiet."""
    import gevent.socket

    from geventws import Connection, ConnectionClosedError, Headers, Request
    from geventws.connection import HandshakeAnswer
    from geventws.core.http11 import RequestHead
    from geventws.core.protocol import Side
    from geventws.core.server_handshake import ServerHandshake
    from geventws.options import ConnectionSettings

    class Failing(HandshakeAnswer):
        def accept(self, *args: Any) -> bytes:
            raise BrokenPipeError(32, "the client is gone")

    headers = Headers(
        [
            ("Host", "example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
    )
    ours, theirs = gevent.socket.socketpair()
    try:
        connection = Connection(
            ours,
            Side.SERVER,
            ConnectionSettings.defaults(),
            handshake=ServerHandshake(RequestHead("GET", "/", headers)),
            request=Request("GET", "/", headers),
            answer=Failing(),
        )
        with pytest.raises(ConnectionClosedError) as info:
            connection.accept()
        assert info.value.code == 1006 and connection.closed
        with pytest.raises(ConnectionClosedError):
            connection.send("x")
        connection.close()  # nothing to do, no error
    finally:
        ours.close()
        theirs.close()


def test_many_connections_through_the_middleware_leave_nothing_behind(serve: Any) -> None:
    """Hundreds of WebSockets (clean and abrupt closes, with and without compression)
    and plain requests through pywsgi: the fixture then checks that descriptors and
    greenlets are back to their baseline."""
    server = pywsgi(serve, wsgi_apps.app)
    for i in range(300):
        extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if i % 2 else ""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            buffer = bytearray()
            sock.sendall(upgrade_request("/ws", extra))
            assert read_response(sock, buffer)[0] == 101
            sock.sendall(client_frame(2, b"ping %d" % i))
            assert read_frame(sock, buffer) == (2, b"ping %d" % i)
            if i % 3 == 0:  # clean close; otherwise the socket just goes away
                sock.sendall(client_frame(8, struct.pack("!H", 1000)))
                assert read_frame(sock, buffer)[0] == 8
        if i % 10 == 0:
            assert requests.get(server.http_url + "/hello", timeout=10).status_code == 200
    assert server.errors.getvalue() == ""
    assert wait_for(lambda: not wsgi_apps.app.connections)
    gc.collect()
    assert wait_for(lambda: not list(wsgi_middleware._LIVE))  # no Connection object kept
