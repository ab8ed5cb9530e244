"""Regression tests for what the fuzz targets found, each at the level a user meets it
(a real server or client on loopback) and at the function the fix is in."""

from __future__ import annotations

import queue
import socket
import threading
from typing import Any, Callable, Iterator

import pytest
from websockets.sync.server import ServerConnection

import geventws
from geventws.core.handshake import client_request
from geventws.core.headers import Headers
from geventws.core.http11 import parse_request
from geventws.core.protocol import Protocol, Side
from geventws.core.request import Request
from geventws.core.uri import parse_uri
from geventws.exceptions import InvalidResponse, InvalidURI

from ..utils import RawClient

# -- request targets that urlsplit refuses or misreads (fuzz_http_request) ------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("//[x", "//[x", ""),  # urlsplit: ValueError("Invalid IPv6 URL")
        ("//a/b?c=1", "//a/b", "c=1"),  # urlsplit: authority "a", path "/b"
        ("ws://server.e]x?x=1", "ws://server.e]x", "x=1"),  # the fuzzer's own input
        ("ws://host/chat?room=1", "/chat", "room=1"),  # absolute-form, as before
        ("/room%201?a=1#frag", "/room 1", "a=1"),
    ],
)
def test_request_target_path_and_query_never_raise(target: str, path: str, query: str) -> None:
    request = Request("GET", target, Headers())
    assert (request.path, request.query_string) == (path, query)


def test_server_accepts_upgrade_whose_target_urlsplit_refuses(serve: Any) -> None:
    """Before the fix the handshake greenlet died on ValueError: no answer at all."""
    seen: queue.Queue[Request] = queue.Queue()

    def handler(connection: geventws.Connection, request: Request) -> None:
        seen.put(request)
        connection.send(request.path)

    server = serve(handler)
    client = RawClient(server.port, path="//[x?q=1")
    try:
        assert client.status == 101
        assert client.read_frame()[1:] == (1, b"//[x")
    finally:
        client.close()
    assert seen.get(timeout=5).args["q"] == "1"


# -- URIs whose resource or host can't go into a request as they are (fuzz_uri) ------


@pytest.mark.parametrize(
    ("uri", "host", "resource"),
    [
        ("ws://h/a b", "h", "/a%20b"),
        ("ws://h/café?q=ä x", "h", "/caf%C3%A9?q=%C3%A4%20x"),
        ("ws://h/\x00\x7f", "h", "/%00%7F"),
        ('ws://h/a"<>`{}|^%41', "h", "/a%22%3C%3E%60%7B%7D|^%41"),
        ("ws://Bücher.example/", "xn--bcher-kva.example", "/"),
    ],
)
def test_parse_uri_gives_a_valid_request_target_and_host(
    uri: str, host: str, resource: str
) -> None:
    parsed = parse_uri(uri)
    assert (parsed.host, parsed.resource_name) == (host, resource)
    head = parse_request(client_request(parsed.host_header, parsed.resource_name, "a" * 22 + "=="))
    assert head.target == resource and head.headers["Host"] == host


@pytest.mark.parametrize(
    "uri", ["ws://a b/", "ws://a\x00b/", "ws://h\udcff/", "ws://h/\udcff", "ws://u\udcff@h/"]
)
def test_parse_uri_refuses_hosts_and_strings_no_request_can_carry(uri: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(uri)


def test_connect_to_an_iri_reaches_an_independent_server(ws_server: Any) -> None:
    """Before the fix the client wrote ``GET /café room`` and websockets refused it."""
    seen: queue.Queue[str] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.put(ws.request.path)
        ws.send("ok")

    port = ws_server(handler)
    with geventws.connect(f"ws://127.0.0.1:{port}/café room?q=ä") as ws:
        assert ws.receive(timeout=5) == "ok"
    assert seen.get(timeout=5) == "/caf%C3%A9%20room?q=%C3%A4"


# -- found in protocol.py and client_handshake.py ------------------------------------


def test_receive_eof_clears_pending() -> None:
    """Found by fuzz_protocol_client: a message then a reserved opcode, then EOF."""
    protocol = Protocol(Side.CLIENT)
    assert protocol.receive_data(b"\x82\x01a\x83\x00") == [b"a"] and protocol.pending
    protocol.receive_eof()
    assert protocol.receive_data(b"") == []
    assert not protocol.pending


@pytest.fixture
def redirecting_server() -> Iterator[Callable[[bytes], int]]:
    """A raw server answering every request with the given bytes; returns its port."""
    listeners: list[socket.socket] = []

    def start(answer: bytes) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        listeners.append(listener)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def test_connect_refuses_an_unparsable_redirect_with_a_geventws_error(
    redirecting_server: Callable[[bytes], int],
) -> None:
    port = redirecting_server(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://[\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises((InvalidURI, InvalidResponse)):
        geventws.connect(f"ws://127.0.0.1:{port}/", open_timeout=10)
