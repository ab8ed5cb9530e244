"""The small part of HTTP/1.1 (RFC 9112) the opening handshake needs, with limits.

The gevent layer reads bytes until :func:`find_head_end` finds the blank line; the head is
then parsed by :func:`parse_request` (server) or :func:`parse_response` (client). Every
malformation raises :class:`~geventws.exceptions.InvalidRequest` carrying the HTTP
status to answer with, or :class:`~geventws.exceptions.InvalidResponse`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import NoReturn, Optional

from ..exceptions import InvalidRequest, InvalidResponse
from .headers import Headers, HeadersLike

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "RequestHead",
    "ResponseHead",
    "find_head_end",
    "parse_request",
    "parse_response",
    "serialize_response",
    "serialize_request",
]

#: The longest request line or header line accepted, CRLF excluded.
MAX_LINE_LENGTH = 8190
#: The most header fields accepted in one request or response.
MAX_HEADERS = 128
#: The most bytes a request or response head may take, blank line included.
MAX_HEAD_SIZE = 65536

# RFC 9110 §5.6.2 token; header field values: visible characters, space and tab.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
# A whole field line: a token, a colon, the value (blanks around it are dropped: the
# leading ones here, the trailing ones after); one regex call per line on the
# handshake's path, where _TOKEN and _VALUE say the same in two.
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x09\x20-\x7e\x80-\xff]*)")


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header block."""

    method: str
    target: str
    headers: Headers


@dataclass(frozen=True)
class ResponseHead:
    """A parsed status line and header block."""

    status: int
    reason: str
    headers: Headers


# Common header names and values, shared by every request that spells them so: the
# request (its headers included) lives as long as the connection, and most of its
# strings are these. A fixed list, so nothing a client sends can grow it.
_COMMON_NAMES = (
    "Host", "Upgrade", "Connection", "Origin", "User-Agent", "Accept", "Accept-Encoding",
    "Accept-Language", "Cache-Control", "Pragma", "Cookie", "Authorization",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol", "X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP",
    "Forwarded", "Content-Length", "Content-Type", "Location", "Server", "Date",
    "Sec-WebSocket-Accept",
)  # fmt: skip
_NAMES: dict[bytes, str] = {
    spelling.encode(): spelling
    for name in _COMMON_NAMES
    for spelling in (sys.intern(name), sys.intern(name.lower()))
}
# Whole fields that most upgrade requests (browsers, Node, Python clients) send the
# same: one shared (name, value) pair each (_PAIRS: name -> value -> pair, for both
# spellings of the name), so a connection's request keeps no tuple of its own for them.
_COMMON_FIELDS = (
    ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Connection", "upgrade"),
    ("Connection", "keep-alive, Upgrade"), ("Sec-WebSocket-Version", "13"),
    ("Pragma", "no-cache"), ("Cache-Control", "no-cache"),
    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ("Accept-Encoding", "gzip, deflate"), ("Accept-Encoding", "gzip, deflate, br"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
)  # fmt: skip


def _shared_pairs(fields: tuple[tuple[str, str], ...]) -> dict[bytes, dict[bytes, tuple[str, str]]]:
    pairs: dict[bytes, dict[bytes, tuple[str, str]]] = {}
    for name, value in fields:
        for spelling in (name, name.lower()):
            shared = (sys.intern(spelling), sys.intern(value))
            pairs.setdefault(spelling.encode(), {})[value.encode()] = shared
    return pairs


_PAIRS = _shared_pairs(_COMMON_FIELDS)
# Their values, shared too when they come with another name or spelling.
_VALUES: dict[bytes, str] = {value.encode(): sys.intern(value) for _, value in _COMMON_FIELDS}


def find_head_end(buffer: bytes | bytearray) -> int:
    """The offset just past the blank line ending the head, or -1 if not there yet.

    Raises :class:`InvalidRequest` (414 for an overlong request line, 431 otherwise) as
    soon as the buffer proves the head too large, so a server never buffers more than
    :data:`MAX_HEAD_SIZE` bytes of it.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_SIZE)
    if end >= 0:
        return end + 4
    first_line_end = buffer.find(b"\r\n", 0, MAX_LINE_LENGTH + 2)
    if first_line_end < 0 and len(buffer) > MAX_LINE_LENGTH:
        raise InvalidRequest(414, "request line too long")
    if len(buffer) >= MAX_HEAD_SIZE:
        raise InvalidRequest(431, "request header block too large")
    return -1


def _parse_fields(lines: list[bytes], error: type[Exception]) -> Headers:
    if len(lines) > MAX_HEADERS:
        raise _error(error, 431, "too many header fields")
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    match = _FIELD.fullmatch
    for line in lines:
        if len(line) > MAX_LINE_LENGTH:
            raise _error(error, 431, "header line too long")
        field = match(line)
        if field is None:
            _refuse_field(line, error)
        name, value = field.groups()
        value = value.rstrip(b" \t")
        common = _PAIRS.get(name)
        pair = None if common is None else common.get(value)
        if pair is None:
            pair = (
                _NAMES.get(name) or name.decode("ascii"),
                _VALUES.get(value) or value.decode("latin-1"),
            )
        append(pair)
    return Headers.from_pairs(pairs)


def _refuse_field(line: bytes, error: type[Exception]) -> NoReturn:
    """Say what is wrong with a field line :data:`_FIELD` refused."""
    name, sep, _ = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        # No colon, whitespace before it, or an obsolete folded line (RFC 9112 §5.2).
        raise _error(error, 400, f"invalid header line: {_show(line)}")
    raise _error(error, 400, f"invalid header value for {_show(name)}")


def _error(error: type[Exception], status: int, message: str) -> Exception:
    if error is InvalidRequest:
        return InvalidRequest(status, message)
    return InvalidResponse(message)


def _show(data: bytes, limit: int = 60) -> str:
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


def parse_request(head: bytes) -> RequestHead:
    """Parse a request head (request line, fields, blank line) as found by
    :func:`find_head_end`.

    Raises :class:`InvalidRequest`: 400 for a malformed head or an HTTP/1.0 request,
    414 for a request line over :data:`MAX_LINE_LENGTH`, 431 for too many or too long
    header lines, 505 for an HTTP major version other than 1.
    """
    lines = head.split(b"\r\n")
    # The head ends with CRLF CRLF: drop the two empty strings that leaves.
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise InvalidRequest(400, "malformed request head")
    request_line = lines[0]
    if len(request_line) > MAX_LINE_LENGTH:
        raise InvalidRequest(414, "request line too long")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise InvalidRequest(400, f"malformed request line: {_show(request_line)}")
    version = _VERSION.fullmatch(parts[2])
    if version is None:
        raise InvalidRequest(400, f"malformed HTTP version: {_show(parts[2])}")
    if version.group(1) != b"1":
        raise InvalidRequest(505, "only HTTP/1.1 is supported")
    if version.group(2) == b"0":
        raise InvalidRequest(400, "WebSocket upgrades need HTTP/1.1")
    headers = _parse_fields(lines[1:-2], InvalidRequest)
    return RequestHead(parts[0].decode("ascii"), parts[1].decode("ascii"), headers)


def parse_response(head: bytes) -> ResponseHead:
    """Parse a response head; raises :class:`InvalidResponse` when malformed."""
    lines = head.split(b"\r\n")
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise InvalidResponse("malformed response head")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not _VERSION.fullmatch(parts[0]) or not parts[1].isdigit():
        raise InvalidResponse(f"malformed status line: {_show(lines[0])}")
    status = int(parts[1])
    if not 100 <= status <= 999 or len(parts[1]) != 3:
        raise InvalidResponse(f"malformed status code: {_show(parts[1])}")
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    headers = _parse_fields(lines[1:-2], InvalidResponse)
    return ResponseHead(status, reason, headers)


#: The reason phrase of each status (a dictionary: ``HTTPStatus(101)`` is an enum call).
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def serialize_response(
    status: int, headers: HeadersLike, body: bytes = b"", reason: Optional[str] = None
) -> bytes:
    """A complete response: status line, ``headers`` as given, blank line, ``body``."""
    fields = headers if isinstance(headers, Headers) else Headers(headers)
    line = f"HTTP/1.1 {status} {reason if reason is not None else _reason(status)}\r\n"
    return line.encode("latin-1") + fields.serialize() + b"\r\n" + body


def serialize_request(method: str, target: str, headers: HeadersLike) -> bytes:
    """A request head: request line, ``headers``, blank line."""
    fields = headers if isinstance(headers, Headers) else Headers(headers)
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + fields.serialize() + b"\r\n"
