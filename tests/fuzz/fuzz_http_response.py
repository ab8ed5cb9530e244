"""Fuzz target: what a client reads in answer to its upgrade request.

``find_head_end`` (whose ``InvalidRequest`` the client turns into ``InvalidResponse``),
``parse_response`` on the head, then ``check_response`` and ``negotiate_client`` as
the client runs them for a request with a known key and two offered subprotocols.
Invariants: only ``InvalidResponse`` escapes the parse and the checks; an accepted head
respects the limits and field grammar and survives a serialize/parse round trip; an
accepted answer carries the right ``Sec-WebSocket-Accept``, an offered subprotocol and a
codec with parameters in range.
"""

from __future__ import annotations

import re

from .common import instrumented, main

with instrumented(__name__ == "__main__"):
    from geventws.core.deflate import DeflateOptions, negotiate_client
    from geventws.core.handshake import accept_key, check_response
    from geventws.core.http11 import (
        MAX_HEAD_SIZE,
        MAX_HEADERS,
        MAX_LINE_LENGTH,
        ResponseHead,
        find_head_end,
        parse_response,
        serialize_response,
    )
    from geventws.exceptions import InvalidRequest, InvalidResponse

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
VALUE = re.compile(r"([^\x00-\x20\x7f]([\t\x20-\x7e\x80-\xff]*[^\x00-\x20\x7f])?)?")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example: the seeds answer it
OFFERED = ["chat", "superchat"]


def check_accepted(head: bytes, parsed: ResponseHead, found: bool) -> None:
    lines = head.split(b"\r\n")
    assert head.endswith(b"\r\n\r\n") and 100 <= parsed.status <= 999
    assert len(lines) - 3 <= MAX_HEADERS
    assert all(len(line) <= MAX_LINE_LENGTH for line in lines[1:])
    assert not found or len(head) <= MAX_HEAD_SIZE
    for name, value in parsed.headers.items():
        assert TOKEN.fullmatch(name), name
        assert VALUE.fullmatch(value), value
    again = serialize_response(parsed.status, parsed.headers, reason=parsed.reason)
    assert parse_response(again) == parsed


def check_handshake(parsed: ResponseHead) -> None:
    try:
        subprotocol = check_response(parsed, KEY, OFFERED)
    except InvalidResponse:
        return
    assert parsed.status == 101
    assert parsed.headers.get_all("Sec-WebSocket-Accept") == [accept_key(KEY)]
    assert subprotocol is None or subprotocol in OFFERED
    try:
        codec = negotiate_client(parsed.headers, DeflateOptions())
    except InvalidResponse:
        return
    if codec is None:
        assert not parsed.headers.get_all("Sec-WebSocket-Extensions")
    else:
        # Never a window wider than asked for: ours (12 by default) or the server's.
        assert 8 <= codec.local_window_bits <= 12 and 9 <= codec.remote_window_bits <= 15
        assert codec.can_compress is (codec.local_window_bits >= 9)


def check_response_head(head: bytes, found: bool) -> None:
    try:
        parsed = parse_response(head)
    except InvalidResponse:
        return
    check_accepted(head, parsed, found)
    check_handshake(parsed)


def TestOneInput(data: bytes) -> None:
    try:
        end = find_head_end(data)
    except InvalidRequest as exc:
        assert exc.status in (400, 414, 431), exc
        end = -1
    if end > 0:
        assert end <= MAX_HEAD_SIZE
        check_response_head(data[:end], found=True)
    if end != len(data):
        check_response_head(data, found=False)


if __name__ == "__main__":
    main(TestOneInput)
