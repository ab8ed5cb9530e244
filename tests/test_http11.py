"""HTTP/1.1 heads for the handshake, with limits (RFC 9112)."""

from __future__ import annotations

import pytest

from geventws.core.http11 import (
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_LINE_LENGTH,
    find_head_end,
    parse_request,
    parse_response,
    serialize_response,
)
from geventws.exceptions import InvalidRequest, InvalidResponse

GOOD = b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n"


def status_of(head: bytes) -> int:
    with pytest.raises(InvalidRequest) as info:
        end = find_head_end(head)
        parse_request(head[:end] if end > 0 else head)
    return info.value.status


def test_parse_request_good() -> None:
    head = parse_request(GOOD)
    assert (head.method, head.target) == ("GET", "/chat?x=1")
    assert head.headers["host"] == "example.com"


def test_find_head_end() -> None:
    assert find_head_end(GOOD + b"extra") == len(GOOD)
    assert find_head_end(GOOD[:-2]) == -1


def test_request_line_too_long_is_414() -> None:
    """RFC 9112 §3: a request-target longer than the server parses gets 414."""
    assert status_of(b"GET /" + b"a" * MAX_LINE_LENGTH + b" HTTP/1.1") == 414
    complete = b"GET /" + b"a" * MAX_LINE_LENGTH + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(InvalidRequest) as info:
        parse_request(complete)
    assert (info.value.status, info.value.message) == (414, "request line too long")


def test_header_block_too_large_is_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"b" * 100 + b"\r\n"
    head += b"X-B: c\r\n" * (MAX_HEAD_SIZE // 8)
    assert status_of(head) == 431


def test_too_many_headers_is_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n"
    assert status_of(head) == 431


def test_header_line_too_long_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_LINE_LENGTH + b"\r\n\r\n"
    assert status_of(head) == 431


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTX/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nName : value\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_requests_are_400(head: bytes) -> None:
    assert status_of(head) == 400


def test_other_http_major_version_is_505() -> None:
    assert status_of(b"GET / HTTP/2.0\r\n\r\n") == 505


def test_header_values_are_stripped_and_latin1() -> None:
    head = parse_request(b"GET / HTTP/1.1\r\nX-A:  caf\xe9 \t\r\n\r\n")
    assert head.headers["x-a"] == "café"


def test_common_fields_are_shared_between_requests_and_read_as_sent() -> None:
    """Fields most clients send alike are one shared pair (an idle connection keeps no
    tuple of its own for them); names keep their spelling, blanks around values go,
    and a value that only resembles a common one is its own."""
    first = parse_request(
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nconnection:  Upgrade \r\n"
        b"Sec-WebSocket-Version: 13\r\nPragma: no-cache, x\r\n\r\n"
    )
    second = parse_request(
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nconnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nPragma: no-cache, x\r\n\r\n"
    )
    expected = [
        ("Upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Pragma", "no-cache, x"),
    ]
    assert first.headers.items() == second.headers.items() == expected
    for ours, theirs in zip(first.headers.items()[:3], second.headers.items()[:3], strict=True):
        assert ours is theirs
    assert first.headers.items()[3] is not second.headers.items()[3]


def test_parse_response() -> None:
    head = parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert head.status == 101 and head.reason == "Switching Protocols"
    assert head.headers["UPGRADE"] == "websocket"


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 abc OK\r\n\r\n", b"garbage\r\n\r\n", b"HTTP/1.1 1011 X\r\n\r\n"]
)
def test_parse_response_malformed(head: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_response(head)


def test_serialize_response() -> None:
    out = serialize_response(404, [("Content-Length", "2")], b"no")
    assert out == b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
