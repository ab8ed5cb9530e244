"""The opening handshake (RFC 6455 §4): validation, accept keys, 101 and error answers.

Server side: :func:`check_request` validates a parsed upgrade request and returns the
client's key; :func:`accept_response` and :func:`reject_response` build the bytes to
answer with. Client side: :func:`client_request` and :func:`check_response`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Optional, Sequence

from ..exceptions import InvalidRequest, InvalidResponse
from .headers import Headers, HeadersLike, parse_token_list
from .http11 import RequestHead, ResponseHead, serialize_request, serialize_response

__all__ = [
    "GUID",
    "HANDSHAKE_FIELDS",
    "accept_key",
    "generate_key",
    "check_request",
    "accept_headers",
    "accept_response",
    "error_headers",
    "reject_response",
    "select_subprotocol",
    "client_request",
    "check_response",
]

#: The GUID of RFC 6455 §1.3, appended to the client's key.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Headers that tell a client which protocol and version to upgrade to (RFC 6455 §4.4).
UPGRADE_REQUIRED_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
]


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """A fresh random ``Sec-WebSocket-Key``: 16 random bytes, base64-encoded."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


#: The request fields the opening handshake reads (lower-case).
HANDSHAKE_FIELDS = frozenset(
    {
        "upgrade",
        "connection",
        "host",
        "sec-websocket-version",
        "sec-websocket-key",
        "origin",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    }
)


def _single(fields: dict[str, list[str]], name: str, display: str) -> Optional[str]:
    values = fields.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise InvalidRequest(400, f"more than one {display} header")
    return values[0]


def check_request(head: RequestHead, fields: Optional[dict[str, list[str]]] = None) -> str:
    """Validate an upgrade request (RFC 6455 §4.2.1); return its ``Sec-WebSocket-Key``.

    ``fields`` are the head's :data:`HANDSHAKE_FIELDS` if the caller has them already
    (``head.headers.select(HANDSHAKE_FIELDS)``). Raises :class:`InvalidRequest` with the
    status to answer: 426 when the request is not a WebSocket upgrade or asks for
    another protocol version (with the headers that say which version to use), 405 for
    a method other than GET, 400 for a missing Host, a missing or malformed key, or a
    missing version.
    """
    if fields is None:
        fields = head.headers.select(HANDSHAKE_FIELDS)
    upgrade = parse_token_list(fields.get("upgrade", ()))
    connection = parse_token_list(fields.get("connection", ()))
    if "websocket" not in upgrade or "upgrade" not in connection:
        raise InvalidRequest(
            426,
            "this endpoint only speaks WebSocket: send an upgrade request",
            UPGRADE_REQUIRED_HEADERS,
        )
    if head.method != "GET":
        raise InvalidRequest(405, f"method {head.method} not allowed", [("Allow", "GET")])
    if _single(fields, "host", "Host") is None:
        raise InvalidRequest(400, "missing Host header")
    version = _single(fields, "sec-websocket-version", "Sec-WebSocket-Version")
    if version is None:
        raise InvalidRequest(400, "missing Sec-WebSocket-Version header")
    if version.strip() != "13":
        raise InvalidRequest(
            426, f"unsupported WebSocket version {version}", UPGRADE_REQUIRED_HEADERS
        )
    key = _single(fields, "sec-websocket-key", "Sec-WebSocket-Key")
    if key is None:
        raise InvalidRequest(400, "missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise InvalidRequest(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    return key


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> Optional[str]:
    """The first of ``supported`` (server preference order) that the client offered."""
    for subprotocol in supported:
        if subprotocol in offered:
            return subprotocol
    return None


def accept_headers(
    key: str,
    subprotocol: Optional[str] = None,
    extensions: Optional[str] = None,
    headers: Optional[HeadersLike] = None,
) -> Headers:
    """The header fields of the 101 Switching Protocols answer to ``key``."""
    fields = Headers.from_pairs(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
    )
    if subprotocol is not None:
        fields.add("Sec-WebSocket-Protocol", subprotocol)
    if extensions:
        fields.add("Sec-WebSocket-Extensions", extensions)
    if headers is not None:
        fields.update(headers)
    return fields


def accept_response(
    key: str,
    subprotocol: Optional[str] = None,
    extensions: Optional[str] = None,
    headers: Optional[HeadersLike] = None,
) -> bytes:
    """The 101 Switching Protocols answer to a request carrying ``key``."""
    return serialize_response(101, accept_headers(key, subprotocol, extensions, headers))


def error_headers(body: bytes, headers: Optional[HeadersLike] = None) -> Headers:
    """The header fields of an HTTP error answer with ``body``: ``headers``, then
    ``text/plain`` unless they give another ``Content-Type``, and ``Content-Length``."""
    fields = Headers(headers) if headers is not None else Headers()
    if "Content-Type" not in fields:
        fields.add("Content-Type", "text/plain; charset=utf-8")
    fields["Content-Length"] = str(len(body))
    return fields


def reject_response(
    status: int, body: str | bytes = b"", headers: Optional[HeadersLike] = None
) -> bytes:
    """An HTTP error answer that ends the connection: :func:`error_headers` and
    ``Connection: close``."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    fields = error_headers(body, headers)
    fields["Connection"] = "close"
    return serialize_response(status, fields, body)


def client_request(
    host: str,
    target: str,
    key: str,
    *,
    origin: Optional[str] = None,
    subprotocols: Optional[Sequence[str]] = None,
    extensions: Optional[str] = None,
    headers: Optional[HeadersLike] = None,
) -> bytes:
    """The bytes of a client's upgrade request for ``target`` on ``host``."""
    fields = Headers(
        [
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ]
    )
    if origin is not None:
        fields.add("Origin", origin)
    if subprotocols:
        fields.add("Sec-WebSocket-Protocol", ", ".join(subprotocols))
    if extensions:
        fields.add("Sec-WebSocket-Extensions", extensions)
    if headers is not None:
        fields.update(headers)
    return serialize_request("GET", target, fields)


def check_response(
    head: ResponseHead, key: str, subprotocols: Optional[Sequence[str]] = None
) -> Optional[str]:
    """Validate the server's answer to our upgrade request; return the subprotocol.

    Raises :class:`InvalidResponse` for a status other than 101, missing upgrade
    headers, a wrong ``Sec-WebSocket-Accept`` or a subprotocol we did not offer.
    """
    headers = head.headers
    if head.status != 101:
        raise InvalidResponse("server rejected WebSocket connection", head.status, headers)
    if "websocket" not in parse_token_list(headers.get_all("Upgrade")):
        raise InvalidResponse("missing Upgrade: websocket in the response", 101, headers)
    if "upgrade" not in parse_token_list(headers.get_all("Connection")):
        raise InvalidResponse("missing Connection: upgrade in the response", 101, headers)
    accepts = headers.get_all("Sec-WebSocket-Accept")
    if accepts != [accept_key(key)]:
        raise InvalidResponse("wrong Sec-WebSocket-Accept in the response", 101, headers)
    chosen = headers.get_all("Sec-WebSocket-Protocol")
    if not chosen:
        return None
    if len(chosen) > 1 or chosen[0] not in (subprotocols or ()):
        raise InvalidResponse(f"server chose a subprotocol not offered: {chosen}", 101, headers)
    return chosen[0]
