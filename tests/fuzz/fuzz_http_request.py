"""Fuzz target: what a server reads before the upgrade, as the server reads it.

``find_head_end`` on the raw bytes, ``parse_request`` on the head it finds (and on the
whole input, which it must also survive), then everything the server does with an
accepted head: :class:`~geventws.core.request.Request` and its properties,
``check_request``, ``negotiate_server`` and the 101 answer, which geventws' own client
must accept. Invariants: only ``InvalidRequest`` escapes, with a status the function
may answer with; what is accepted respects ``MAX_LINE_LENGTH``, ``MAX_HEADERS`` and
``MAX_HEAD_SIZE`` and the field grammar, and survives a serialize/parse round trip.
"""

from __future__ import annotations

import base64
import http.cookies
import re
import urllib.parse

from .common import instrument_modules, instrumented, main

with instrumented(__name__ == "__main__"):
    from geventws.core.deflate import DeflateOptions, negotiate_client, negotiate_server
    from geventws.core.handshake import accept_response, check_request, check_response
    from geventws.core.http11 import (
        MAX_HEAD_SIZE,
        MAX_HEADERS,
        MAX_LINE_LENGTH,
        RequestHead,
        find_head_end,
        parse_request,
        parse_response,
        serialize_request,
    )
    from geventws.core.request import Request
    from geventws.exceptions import InvalidRequest

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
VALUE = re.compile(r"([^\x00-\x20\x7f]([\t\x20-\x7e\x80-\xff]*[^\x00-\x20\x7f])?)?")
TARGET = re.compile(r"[\x21-\x7e]+")
CRLF2 = b"\r\n\r\n"


def check_found_head(data: bytes) -> int:
    """``find_head_end``'s answer, checked against the buffer; -1 when it refused."""
    try:
        end = find_head_end(data)
    except InvalidRequest as exc:
        first_line = data.find(b"\r\n")
        if exc.status == 400:  # no line end within the request line limit
            assert len(data) > MAX_LINE_LENGTH and not 0 <= first_line <= MAX_LINE_LENGTH
        else:
            assert exc.status == 431, exc
            assert len(data) >= MAX_HEAD_SIZE
        assert CRLF2 not in data[:MAX_HEAD_SIZE]
        return -1
    if end < 0:
        assert end == -1 and CRLF2 not in data[:MAX_HEAD_SIZE] and len(data) < MAX_HEAD_SIZE
    else:
        assert data.find(CRLF2) == end - 4 and end <= MAX_HEAD_SIZE
    return end


def check_accepted(head: bytes, parsed: RequestHead) -> None:
    lines = head.split(b"\r\n")
    assert head.endswith(CRLF2) and len(lines[0]) <= MAX_LINE_LENGTH
    assert len(lines) - 3 <= MAX_HEADERS and all(len(line) <= MAX_LINE_LENGTH for line in lines)
    assert TOKEN.fullmatch(parsed.method) and TARGET.fullmatch(parsed.target)
    assert len(parsed.headers) == len(lines) - 3
    for name, value in parsed.headers.items():
        assert TOKEN.fullmatch(name), name
        assert VALUE.fullmatch(value), value
    again = serialize_request(parsed.method, parsed.target, parsed.headers)
    assert find_head_end(again) == len(again)
    assert parse_request(again) == parsed


def check_upgrade(parsed: RequestHead) -> None:
    """What the server does next with an accepted head."""
    request = Request(parsed.method, parsed.target, parsed.headers, ("127.0.0.1", 1))
    assert isinstance(request.path, str) and isinstance(request.query_string, str)
    assert all(isinstance(v, str) for k in request.args for v in request.args.getlist(k))
    assert all(p and p == p.strip() and "," not in p for p in request.subprotocols)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.cookies.items())
    assert isinstance(request.upgrade, bool)
    try:
        key = check_request(parsed)
    except InvalidRequest as exc:
        assert exc.status in (400, 405, 426), exc
        return
    assert request.upgrade and parsed.method == "GET"
    assert len(base64.b64decode(key, validate=True)) == 16
    try:
        negotiated = negotiate_server(parsed.headers, DeflateOptions())
    except InvalidRequest as exc:
        assert exc.status == 400, exc
        return
    subprotocol = request.subprotocols[0] if request.subprotocols else None
    extensions = None if negotiated is None else negotiated[0]
    answer = accept_response(key, subprotocol, extensions)
    response = parse_response(answer)
    assert check_response(response, key, request.subprotocols) == subprotocol
    if negotiated is not None:
        assert negotiate_client(response.headers, DeflateOptions()) is not None


def check_request_head(head: bytes, found: bool) -> None:
    try:
        parsed = parse_request(head)
    except InvalidRequest as exc:
        assert exc.status in (400, 414, 431, 505), exc
        return
    if found:
        assert len(head) <= MAX_HEAD_SIZE
    check_accepted(head, parsed)
    check_upgrade(parsed)


def TestOneInput(data: bytes) -> None:
    end = check_found_head(data)
    if end > 0:
        check_request_head(data[:end], found=True)
    if end != len(data):
        check_request_head(data, found=False)


if __name__ == "__main__":
    instrument_modules(True, urllib.parse, http.cookies)
    main(TestOneInput)
