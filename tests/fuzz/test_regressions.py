"""Regression tests for what the fuzz targets found, each at the level a user meets it
(a real server or client on loopback) and at the function the fix is in."""

from __future__ import annotations

import queue
from typing import Any

import pytest

import geventws
from geventws.core.headers import Headers
from geventws.core.request import Request

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
