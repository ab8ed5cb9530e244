"""Fuzz target: ``parse_uri``, the client's reading of ``ws://`` and ``wss://`` URIs.

The input is decoded as UTF-8 (undecodable bytes become lone surrogates, which a
Python string may hold). Invariants: only ``InvalidURI`` escapes; an accepted URI has a
non-empty host that is valid in a ``Host`` header, a port in 0-65535, a resource name
that is a valid request-target (so the request line the client writes parses on the
server side with the same target and ``Host``, unless it is longer than the server's
line limit), and it serializes back to an equivalent URI.
"""

from __future__ import annotations

import contextlib
import encodings.idna
import re
import urllib.parse
from urllib.parse import quote

from .common import instrument_modules, instrumented, main

with instrumented(__name__ == "__main__"):
    from geventws.core.handshake import client_request
    from geventws.core.http11 import MAX_LINE_LENGTH, parse_request
    from geventws.core.uri import WebSocketURI, parse_uri
    from geventws.exceptions import InvalidRequest, InvalidURI

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# RFC 3986 reg-name or IPv4 (unreserved, sub-delims, pct-encoded), or an IPv6 literal
# (with an optional RFC 6874 zone) between brackets; an optional port.
HOST_HEADER = re.compile(
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+(?::[0-9]+)?"
    r"|\[[0-9A-Fa-f:.]+(?:%(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})+)?\](?::[0-9]+)?"
)
TARGET = re.compile(r"/[\x21-\x7e]*")


def serialize(uri: WebSocketURI) -> str:
    """The URI written back from its parts."""
    user_info = ""
    if uri.user_info is not None:
        user, password = uri.user_info
        user_info = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    scheme = "wss" if uri.secure else "ws"
    return f"{scheme}://{user_info}{host}:{uri.port}{uri.resource_name}"


def check(uri: WebSocketURI) -> None:
    assert uri.host and 0 <= uri.port <= 65535, uri
    assert HOST_HEADER.fullmatch(uri.host_header), uri.host_header
    assert TARGET.fullmatch(uri.resource_name), uri.resource_name
    if uri.authorization is not None:
        assert uri.authorization.isascii()
    request = client_request(uri.host_header, uri.resource_name, KEY)
    if max(map(len, request.split(b"\r\n"))) > MAX_LINE_LENGTH:
        # Percent-encoding triples non-ASCII: such a URI is valid, only too long for
        # the server's limit, which refuses it as it should.
        with contextlib.suppress(InvalidRequest):
            parse_request(request)
            raise AssertionError("a request line over MAX_LINE_LENGTH was accepted")
        return
    head = parse_request(request)
    assert head.target == uri.resource_name
    assert head.headers.get_all("Host") == [uri.host_header]
    assert parse_uri(serialize(uri)) == uri, serialize(uri)


def TestOneInput(data: bytes) -> None:
    try:
        uri = parse_uri(data.decode("utf-8", "surrogateescape"))
    except InvalidURI:
        return
    check(uri)


if __name__ == "__main__":
    instrument_modules(True, urllib.parse, encodings.idna)
    main(TestOneInput)
