"""Fuzz target: the handshake's header-value grammars, on values as HTTP delivers them.

The input gives one to four field values (latin-1, reduced to the characters a parsed
field value can hold), the header of the upgrade request and of the 101 answer they
stand for, and the server's and client's compression windows. Every value goes through:

* ``parse_token_list`` and ``Request.subprotocols``: non-empty, stripped items without
  commas, stable when joined and parsed again;
* ``parse_extensions``: ``ValueError`` or a list that survives serialize/parse;
* ``negotiate_server``: ``InvalidRequest(400)``, ``None``, or an answer geventws' own
  client accepts (``negotiate_client``) with codecs on both ends that agree on windows
  and context takeover and carry messages both ways, the sender never using a wider
  window than negotiated (the inflater uses exactly that window);
* ``negotiate_client`` directly: ``InvalidResponse``, ``None`` or a codec in range;
* ``check_request`` / ``check_response`` with the values in place of one
  ``Sec-WebSocket-*``, ``Upgrade``, ``Connection`` or ``Host`` field: only
  ``InvalidRequest`` (400, 405, 426) / ``InvalidResponse``, and what is accepted is valid.
"""

from __future__ import annotations

import base64
import re
import zlib
from typing import Optional

from .common import DataProvider, instrumented, main, provider

with instrumented(__name__ == "__main__"):
    from geventws.core.deflate import (
        Deflate,
        DeflateOptions,
        negotiate_client,
        negotiate_server,
        parse_extensions,
    )
    from geventws.core.handshake import accept_key, check_request, check_response
    from geventws.core.headers import Headers, parse_token_list
    from geventws.core.http11 import RequestHead, ResponseHead
    from geventws.core.request import Request
    from geventws.exceptions import InvalidRequest, InvalidResponse

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
OFFERED = ["chat", "superchat"]
REQUEST_FIELDS = ["Sec-WebSocket-Key", "Sec-WebSocket-Version", "Upgrade", "Connection", "Host"]
RESPONSE_FIELDS = ["Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Upgrade", "Connection"]
TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_NOT_IN_VALUES = bytes(b for b in range(256) if b != 9 and (b < 32 or b == 127))


def read_values(fdp: DataProvider, count: int) -> list[str]:
    """``count`` values as ``parse_request`` would give them."""
    sizes = [fdp.ConsumeIntInRange(0, 1024) for _ in range(count - 1)]
    raw = [fdp.ConsumeBytes(size) for size in sizes]
    raw.append(fdp.ConsumeBytes(fdp.remaining_bytes()))
    return [value.translate(None, _NOT_IN_VALUES).strip(b" \t").decode("latin-1") for value in raw]


def check_lists(values: list[str]) -> None:
    tokens = parse_token_list(values)
    assert all(t and t == t.strip() and "," not in t and t == t.lower() for t in tokens)
    assert parse_token_list([", ".join(tokens)]) == tokens
    headers = Headers([("Sec-WebSocket-Protocol", value) for value in values])
    offered = Request("GET", "/", headers).subprotocols
    assert all(p and p == p.strip() and "," not in p for p in offered)
    again = Headers([("Sec-WebSocket-Protocol", ", ".join(offered))])
    assert Request("GET", "/", again).subprotocols == offered


def _quote(value: str) -> str:
    if TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_extensions(values: list[str]) -> None:
    try:
        parsed = parse_extensions(values)
    except ValueError:
        return
    parts = []
    for name, params in parsed:
        assert TOKEN.fullmatch(name) and name == name.lower()
        items = [name]
        for param, value in params:
            assert TOKEN.fullmatch(param) and param == param.lower()
            items.append(param if value is None else f"{param}={_quote(value)}")
        parts.append("; ".join(items))
    assert parse_extensions([", ".join(parts)]) == parsed


class _Direction:
    """Messages one way: the sender's codec, the receiver's, and an independent
    inflater with exactly the sender's negotiated window (a reference farther back
    fails there even when the receiver's wider window would hide it)."""

    def __init__(self, sender: Deflate, receiver: Deflate) -> None:
        self.sender = sender
        self.receiver = receiver
        self.shadow = zlib.decompressobj(-sender.local_window_bits)

    def carry(self, message: bytes) -> None:
        payload = self.sender.compress(message)
        assert self.receiver.decompress(payload, True, None) == message
        if self.sender.local_no_context_takeover:
            self.shadow = zlib.decompressobj(-self.sender.local_window_bits)
        assert self.shadow.decompress(payload + b"\x00\x00\xff\xff") == message


def check_negotiation(values: list[str], server_bits: int, client_bits: int) -> None:
    offer = Headers([("Sec-WebSocket-Extensions", value) for value in values])
    try:
        negotiated = negotiate_server(offer, DeflateOptions(window_bits=server_bits))
    except InvalidRequest as exc:
        assert exc.status == 400, exc
        return
    if negotiated is None:
        return
    agreed, server = negotiated
    answer = Headers([("Sec-WebSocket-Extensions", agreed)])
    client = negotiate_client(answer, DeflateOptions(window_bits=client_bits))
    assert client is not None, agreed
    assert server.local_window_bits <= server_bits and server.can_compress
    assert server.local_window_bits <= client.remote_window_bits
    assert client.local_window_bits <= server.remote_window_bits
    assert server.local_no_context_takeover is client.remote_no_context_takeover
    assert client.local_no_context_takeover is server.remote_no_context_takeover
    messages = [value.encode("latin-1") for value in values] + [b"message " * 300, b""]
    to_client = _Direction(server, client)
    to_server = _Direction(client, server) if client.can_compress else None
    for message in messages * 2:
        to_client.carry(message)
        if to_server is not None:
            to_server.carry(message)


def check_client_answer(values: list[str], client_bits: int) -> None:
    answer = Headers([("Sec-WebSocket-Extensions", value) for value in values])
    try:
        codec = negotiate_client(answer, DeflateOptions(window_bits=client_bits))
    except InvalidResponse:
        return
    if codec is not None:
        assert 8 <= codec.local_window_bits <= client_bits
        assert 9 <= codec.remote_window_bits <= 15


def check_request_fields(values: list[str], field: str) -> None:
    headers = Headers(
        [
            ("Host", "example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    )
    headers.remove(field)
    for value in values:
        headers.add(field, value)
    try:
        key = check_request(RequestHead("GET", "/", headers))
    except InvalidRequest as exc:
        assert exc.status in (400, 405, 426), exc
        return
    assert headers.get_all("Sec-WebSocket-Key") == [key]
    assert len(base64.b64decode(key, validate=True)) == 16
    assert [v.strip() for v in headers.get_all("Sec-WebSocket-Version")] == ["13"]
    assert len(headers.get_all("Host")) == 1
    assert "websocket" in parse_token_list(headers.get_all("Upgrade"))
    assert "upgrade" in parse_token_list(headers.get_all("Connection"))
    accept_key(key)


def check_response_fields(values: list[str], field: str) -> None:
    headers = Headers(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(KEY)),
        ]
    )
    headers.remove(field)
    for value in values:
        headers.add(field, value)
    try:
        subprotocol: Optional[str] = check_response(
            ResponseHead(101, "Switching Protocols", headers), KEY, OFFERED
        )
    except InvalidResponse:
        return
    assert headers.get_all("Sec-WebSocket-Accept") == [accept_key(KEY)]
    assert subprotocol is None or subprotocol in OFFERED
    assert headers.get_all("Sec-WebSocket-Protocol") == (
        [] if subprotocol is None else [subprotocol]
    )


def TestOneInput(data: bytes) -> None:
    fdp = provider(data)
    count = fdp.ConsumeIntInRange(1, 4)
    field = fdp.ConsumeIntInRange(0, len(REQUEST_FIELDS) - 1)
    server_bits = fdp.ConsumeIntInRange(9, 15)
    client_bits = fdp.ConsumeIntInRange(9, 15)
    values = read_values(fdp, count)
    check_lists(values)
    check_extensions(values)
    check_negotiation(values, server_bits, client_bits)
    check_client_answer(values, client_bits)
    check_request_fields(values, REQUEST_FIELDS[field])
    check_response_fields(values, RESPONSE_FIELDS[field % len(RESPONSE_FIELDS)])


if __name__ == "__main__":
    main(TestOneInput)
