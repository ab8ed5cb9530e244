"""The server's HTTP side, against independent clients on loopback (``requests``, raw
sockets, websockets' client): upgrade requests refused with the right status, slow or
vanishing clients, request heads in pieces, and the listening socket's options."""

from __future__ import annotations

import logging
import socket
import sys
import time
from typing import Any

import pytest
import requests
from websockets.sync.client import connect

from geventws import Connection, Request
from geventws.examples.echo import handle as echo

from .utils import client_frame


def test_every_accepted_connection_has_tcp_nodelay(serve: Any) -> None:
    """Small frames go out at once (no Nagle delay): the server puts ``TCP_NODELAY`` on
    the listening socket, which accepted sockets inherit, or else on each one."""

    def report(connection: Connection, request: Request) -> None:
        sock = connection._sock
        connection.send(str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    server = serve(report)
    assert server.server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for _ in range(3):  # the first connection, which checks inheritance, and later ones
        with connect(server.url) as ws:
            assert ws.recv(timeout=10) != "0"
    if sys.platform.startswith("linux"):  # Linux copies it: no setsockopt per connection
        assert server.server._nodelay_inherited is True


# -- HTTP errors before the upgrade --------------------------------------------------


def test_plain_http_get_is_426(serve: Any) -> None:
    server = serve(echo)
    response = requests.get(f"http://127.0.0.1:{server.port}/", timeout=5)
    assert response.status_code == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.headers["Upgrade"] == "websocket"


def upgrade_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    headers.update(overrides)
    return headers


def test_wrong_version_is_426_with_version(serve: Any) -> None:
    server = serve(echo)
    response = requests.get(
        f"http://127.0.0.1:{server.port}/",
        headers=upgrade_headers(**{"Sec-WebSocket-Version": "8"}),
        timeout=5,
    )
    assert response.status_code == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"


def test_bad_key_is_400(serve: Any) -> None:
    server = serve(echo)
    response = requests.get(
        f"http://127.0.0.1:{server.port}/",
        headers=upgrade_headers(**{"Sec-WebSocket-Key": "short"}),
        timeout=5,
    )
    assert response.status_code == 400
    assert "Sec-WebSocket-Key" in response.text


def test_post_upgrade_is_405(serve: Any) -> None:
    server = serve(echo)
    response = requests.post(
        f"http://127.0.0.1:{server.port}/", headers=upgrade_headers(), timeout=5
    )
    assert response.status_code == 405


def test_oversized_headers_are_431(serve: Any) -> None:
    server = serve(echo)
    headers = upgrade_headers(**{f"X-Pad-{i}": "p" * 1000 for i in range(100)})
    response = requests.get(f"http://127.0.0.1:{server.port}/", headers=headers, timeout=5)
    assert response.status_code == 431


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", b"400"),
    ],
)
def test_malformed_requests_get_an_answer_never_a_traceback(
    serve: Any, caplog: Any, data: bytes, status: bytes
) -> None:
    server = serve(echo)
    with caplog.at_level(logging.INFO, logger="geventws"):
        answer = raw_exchange(server.port, data)
    assert answer.split(b" ", 2)[1] == status
    assert b"Connection: close" in answer
    access = [r.getMessage() for r in caplog.records if r.name == "geventws.access"]
    assert any(f" {status.decode()} duration=" in line for line in access), access
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_handshake_timeout_drops_slow_clients(serve: Any) -> None:
    server = serve(echo, handshake_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        assert sock.recv(100) == b""  # dropped without an answer
        assert time.monotonic() - start < 9  # the deadline fired, not the client's timeout


@pytest.mark.parametrize("cut", [5, 40, -2], ids=["request-line", "headers", "blank-line"])
def test_a_request_head_in_pieces_is_read_whole_then_the_frame_after_it(
    serve: Any, cut: int
) -> None:
    """The server reads what came first without waiting, then waits for the rest (under
    the handshake deadline): a head sent in pieces, and a frame sent with its end, work
    as one sent at once."""
    server = serve(echo)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request[:cut])
        time.sleep(0.05)  # likely read on its own (either way, the answer must be right)
        sock.sendall(request[cut:] + client_frame(1, b"after the head"))
        answer = b""
        while b"after the head" not in answer:
            data = sock.recv(4096)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer


def test_client_vanishing_during_handshake_is_quiet(serve: Any, caplog: Any) -> None:
    server = serve(echo)
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    with connect(server.url) as ws:  # still serving
        ws.send("x")
        assert ws.recv() == "x"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
