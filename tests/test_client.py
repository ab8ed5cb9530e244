"""geventws.connect() against an independent server (websockets' sync server) and
against geventws' own; a fuzzing server for the client's protocol checks; the
interactive ``geventws client`` command."""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

import geventws
from geventws import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidResponse,
    InvalidURI,
)
from geventws.core.uri import parse_uri
from geventws.examples.echo import handle as echo

from .utils import ThrowawayCA, cycles_left, wait_in_hub


def ws_echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


# -- URIs --------------------------------------------------------------------------------


def test_parse_uri_defaults_ipv6_query_and_userinfo() -> None:
    uri = parse_uri("ws://example.com/chat?room=1")
    assert (uri.host, uri.port, uri.resource_name, uri.secure) == (
        "example.com",
        80,
        "/chat?room=1",
        False,
    )
    assert uri.host_header == "example.com"
    assert (
        parse_uri("wss://example.com").port == 443
        and parse_uri("wss://example.com").resource_name == "/"
    )
    v6 = parse_uri("ws://[::1]:8080/x")
    assert (v6.host, v6.port, v6.host_header) == ("::1", 8080, "[::1]:8080")
    auth = parse_uri("wss://user:p%40ss@h/")
    assert auth.user_info == ("user", "p@ss")
    assert auth.authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()


@pytest.mark.parametrize("bad", ["http://x/", "ws://", "ws://h/#frag", "ws://h:99999/", "nonsense"])
def test_parse_uri_refuses(bad: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(bad)


# -- against websockets' server ---------------------------------------------------------


def test_text_binary_large_and_fragmented_with_websockets_server(ws_server: Any) -> None:
    def handler(ws: ServerConnection) -> None:
        ws.send(["frag", "mented"])  # the server sends a fragmented message
        for message in ws:
            ws.send(message)

    port = ws_server(handler, max_size=None)
    with geventws.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        assert ws.receive(timeout=5) == "fragmented"
        ws.send("héllo")
        assert ws.receive(timeout=5) == "héllo"
        ws.send(b"\x00\x01", binary=True)
        assert ws.receive(timeout=5) == b"\x00\x01"
        big = os.urandom(3 * 2**20)
        ws.send(big, binary=True)
        assert ws.receive(timeout=10) == big
        assert ws.ping(b"hi").get(timeout=5) >= 0
    assert ws.close_code == 1000


def test_request_headers_origin_subprotocol_user_agent(ws_server: Any) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        seen.put(ws.request)
        ws.send(ws.subprotocol or "")

    port = ws_server(handler, subprotocols=["v2"])
    with geventws.connect(
        f"ws://user:secret@127.0.0.1:{port}/path?q=1",
        headers={"X-Token": "abc"},
        origin="https://example.com",
        subprotocols=["v1", "v2"],
    ) as ws:
        assert ws.subprotocol == "v2"
        assert ws.receive(timeout=5) == "v2"
        assert ws.response_headers is not None and "Sec-WebSocket-Accept" in ws.response_headers
    request = seen.get(timeout=5)
    assert request.path == "/path?q=1"
    assert request.headers["X-Token"] == "abc"
    assert request.headers["Origin"] == "https://example.com"
    assert request.headers["User-Agent"] == "geventws"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"user:secret").decode()


def test_server_closes_with_code(ws_server: Any) -> None:
    def handler(ws: ServerConnection) -> None:
        ws.recv()
        ws.close(4001, "custom")

    port = ws_server(handler)
    ws = geventws.connect(f"ws://127.0.0.1:{port}/")
    ws.send("x")
    with pytest.raises(ConnectionClosedError) as info:
        ws.receive(timeout=5)
    assert (info.value.code, info.value.reason) == (4001, "custom")
    assert (ws.close_code, ws.close_reason) == (4001, "custom")
    ws.close()


def test_client_closes_with_code(ws_server: Any) -> None:
    codes: queue.Queue[Any] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        for _ in ws:
            pass
        codes.put((ws.close_code, ws.close_reason))

    port = ws_server(handler)
    ws = geventws.connect(f"ws://127.0.0.1:{port}/")
    ws.close(1001, "bye")
    assert codes.get(timeout=5) == (1001, "bye")
    assert ws.close_code == 1001
    with pytest.raises(ConnectionClosedOK):
        ws.receive()


def test_iteration_ends_on_normal_close(ws_server: Any) -> None:
    def handler(ws: ServerConnection) -> None:
        for i in range(3):
            ws.send(str(i))

    port = ws_server(handler)
    with geventws.connect(f"ws://127.0.0.1:{port}/") as ws:
        assert list(ws) == ["0", "1", "2"]


def test_tls_with_test_certificate(ws_server: Any) -> None:
    tls = ThrowawayCA("localhost")
    port = ws_server(ws_echo, ssl=tls.server_context)
    with geventws.connect(f"wss://localhost:{port}/", ssl=tls.client_context) as ws:
        ws.send("secret")
        assert ws.receive(timeout=5) == "secret"
    # Without trusting the test CA, verification fails (the default context verifies).
    with pytest.raises(ssl.SSLCertVerificationError):
        geventws.connect(f"wss://localhost:{port}/")


def test_tls_against_geventws_server(serve: Any) -> None:
    tls = ThrowawayCA("localhost")
    server = serve(echo, ssl_context=tls.server_context)
    with geventws.connect(f"wss://localhost:{server.port}/", ssl=tls.client_context) as ws:
        payload = os.urandom(500000)
        ws.send(payload, binary=True)
        assert ws.receive(timeout=10) == payload


# -- against geventws' own server ---------------------------------------------------------


def test_against_geventws_server(serve: Any) -> None:
    server = serve(echo)
    with geventws.connect(server.url) as ws:
        for message in ("a", b"b", "€" * 1000, os.urandom(200000)):
            ws.send(message, binary=isinstance(message, bytes))
            assert ws.receive(timeout=5) == message


@pytest.mark.parametrize("ending", ["client-closes", "server-closes", "server-fails"])
def test_a_finished_client_connection_is_freed_without_the_garbage_collector(
    serve: Any, ending: str
) -> None:
    """Once its socket is closed, no part of a client connection is in a reference
    cycle: dropped, it is freed by reference counting, not left to the collector."""

    def handler(connection: geventws.Connection, request: geventws.Request) -> None:
        if ending == "server-closes":
            connection.send("bye")
        elif ending == "server-fails":
            connection.receive()
            raise RuntimeError("bug")  # logged; the client gets 1011
        else:
            for message in connection:
                connection.send(message)

    server = serve(handler)
    with cycles_left() as collect:
        for _ in range(3):
            ws = geventws.connect(server.url, open_timeout=10)
            if ending == "client-closes":
                ws.send("x")
                assert ws.receive(timeout=10) == "x"
                ws.close()
            elif ending == "server-closes":
                assert list(ws) == ["bye"]  # the server's close ends the iteration
            else:
                ws.send("x")
                with pytest.raises(ConnectionClosedError):
                    ws.receive(timeout=10)
                assert ws.close_code == 1011
            # The closing runs in this thread's hub: let it.
            closed = wait_in_hub(lambda sock=ws._sock: sock.fileno() == -1)
            assert closed, "the client's socket is still open"
            del ws
        assert collect() == set()


def test_rejected_handshake_is_readable(serve: Any) -> None:
    def handler(connection: Any, request: Any) -> None:
        connection.reject(401, "who are you?", {"WWW-Authenticate": "Bearer"})

    server = serve(handler)
    with pytest.raises(InvalidResponse) as info:
        geventws.connect(server.url)
    assert info.value.status == 401
    assert info.value.headers is not None and info.value.headers["WWW-Authenticate"] == "Bearer"
    assert info.value.body == b"who are you?"


def test_redirects_are_followed(serve: Any) -> None:
    target = serve(echo)

    def redirect(connection: Any, request: Any) -> None:
        hops = int(request.args.get("hops", "0"))
        location = f"/?hops={hops - 1}" if hops > 0 else f"{target.url}/final"
        connection.reject(302 if hops % 2 else 307, headers={"Location": location})

    server = serve(redirect)
    with geventws.connect(server.url + "/?hops=3") as ws:
        ws.send("made it")
        assert ws.receive(timeout=5) == "made it"
    with pytest.raises(geventws.InvalidHandshake):
        geventws.connect(server.url + "/?hops=3", max_redirects=2)


def test_refused_connection_and_dns_errors_are_clear() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        geventws.connect(f"ws://127.0.0.1:{port}/")
    with pytest.raises(socket.gaierror):
        geventws.connect("ws://no-such-host.invalid/", open_timeout=20)


def test_open_timeout_when_server_never_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(TimeoutError):
            geventws.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.3)


# -- a fuzzing server: what the client does with bad frames ----------------------------------


class FuzzServer:
    """Accepts one client, answers its handshake (optionally wrongly), sends ``frames``
    and records what the client sends back."""

    def __init__(self, frames: bytes = b"", response: Callable[[str], bytes] | None = None) -> None:
        self.frames = frames
        self.response = response
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(10)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(
                hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            ).decode()
            if self.response is not None:
                conn.sendall(self.response(accept))
            else:
                conn.sendall(
                    f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                )
            conn.sendall(self.frames)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    self.received += data
            except OSError:
                pass
        self.listener.close()

    def client_close_code(self) -> int | None:
        """The code of the (masked) close frame the client sent, if any."""
        self.thread.join(15)
        data = self.received
        while len(data) >= 6:
            b0, b1 = data[0], data[1]
            length = b1 & 0x7F
            assert b1 & 0x80, "client frames must be masked"
            mask = data[2:6]
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6 : 6 + length]))
            if b0 & 0x0F == 8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            data = data[6 + length :]
        return None


def server_frame(
    opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = False
) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if len(payload) < 126:
        header = struct.pack("!BB", first, (0x80 if mask else 0) | len(payload))
    else:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, len(payload))
    if mask:
        key = b"\x01\x02\x03\x04"
        return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + payload


@pytest.mark.parametrize(
    ("frames", "code", "before"),
    [
        (server_frame(1, b"ok") + server_frame(1, b"\xff"), 1007, ["ok"]),
        (server_frame(1, b"ok\xc0", fin=False), 1007, []),  # fail fast, message unfinished
        (server_frame(1, b"masked", mask=True), 1002, []),
        (server_frame(1, b"x", rsv=4), 1002, []),
        (server_frame(3, b"x"), 1002, []),
        (server_frame(9, b"p", fin=False), 1002, []),
        (server_frame(9, b"x" * 126), 1002, []),
        (server_frame(0, b"x"), 1002, []),
        (server_frame(8, struct.pack("!H", 1005)), 1002, []),
        (server_frame(8, b"\x03"), 1002, []),
        (server_frame(8, struct.pack("!H", 1000) + b"\xff"), 1007, []),
        (struct.pack("!BBQ", 0x82, 127, 2**40), 1009, []),
        (struct.pack("!BBQ", 0x82, 127, 2**63), 1002, []),
    ],
)
def test_client_fails_bad_server_frames(frames: bytes, code: int, before: list[str]) -> None:
    server = FuzzServer(frames)
    ws = geventws.connect(f"ws://127.0.0.1:{server.port}/")
    got = []
    with pytest.raises(ConnectionClosedError) as info:
        while True:
            got.append(ws.receive(timeout=10))
    assert got == before
    assert info.value.code == code
    ws.close()
    assert server.client_close_code() == code


def test_client_answers_pings_and_echoes_close() -> None:
    server = FuzzServer(server_frame(9, b"ping!") + server_frame(8, struct.pack("!H", 1000)))
    # This server never closes TCP first: don't wait the default 10 s for it.
    ws = geventws.connect(f"ws://127.0.0.1:{server.port}/", close_timeout=0.5)
    with pytest.raises(ConnectionClosedOK):
        ws.receive(timeout=10)
    ws.close()
    server.thread.join(15)
    assert server.received.startswith(b"\x8a\x85")  # a masked pong with 5 bytes
    assert server.client_close_code() == 1000


@pytest.mark.parametrize(
    "response",
    [
        lambda accept: (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n"
        ),
        lambda accept: (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: unoffered\r\n\r\n"
        ).encode(),
        lambda accept: (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: x-unknown\r\n\r\n"
        ).encode(),
        lambda accept: b"garbage\r\n\r\n",
    ],
    ids=["bad-accept", "unoffered-subprotocol", "unoffered-extension", "garbage"],
)
def test_bad_handshake_responses_raise(response: Callable[[str], bytes]) -> None:
    server = FuzzServer(response=response)
    with pytest.raises(InvalidResponse):
        geventws.connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["chat"])


# -- the interactive command -----------------------------------------------------------------


def test_client_command_with_piped_stdin(serve: Any) -> None:
    server = serve(echo)
    out = subprocess.run(
        [sys.executable, "-m", "geventws", "client", server.url],
        input="hello\nwörld\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< hello", "< wörld"]
    assert "Connection closed: 1000" in out.stderr


def test_client_command_binary_hex_headers_and_abnormal_exit(serve: Any) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(connection: Any, request: Any) -> None:
        seen.put((request.headers.get("X-A"), request.subprotocols))
        connection.accept(subprotocol="chat")
        connection.send(b"\x00\xff", binary=True)
        connection.close(4000, "app says bye")

    server = serve(handler)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "geventws",
            "client",
            server.url,
            "--binary",
            "--header",
            "X-A: 1",
            "--subprotocol",
            "chat",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.splitlines() == ["< (binary) 00ff"]
    assert "Connection closed: 4000 (app says bye)." in out.stderr
    assert out.returncode == 1
    assert seen.get(timeout=5) == ("1", ["chat"])


def test_client_command_connection_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "geventws", "client", "ws://127.0.0.1:1/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("geventws: error: cannot connect to ws://127.0.0.1:1/")
    assert "Traceback" not in out.stderr
