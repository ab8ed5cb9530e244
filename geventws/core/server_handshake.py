"""The server side of the opening handshake (RFC 6455 §4.2) as a state machine, sans I/O.

A :class:`ServerHandshake` is made from a parsed upgrade request and the server's
policy. Making it validates the request (RFC 6455, the allowed origins, the
permessage-deflate offers) and raises :class:`~geventws.InvalidRequest` with the HTTP
status to answer. Then exactly one decision follows:

* :meth:`ServerHandshake.accept` returns the 101 answer (its header fields, for WSGI
  servers that write the status line themselves, and its bytes) and the
  :class:`~geventws.core.protocol.Protocol` of the open connection;
* :meth:`ServerHandshake.reject` returns an HTTP error answer.

The gevent layer writes what it is given; it makes no protocol decision of its own.
"""

from __future__ import annotations

import enum
from typing import Iterable, NamedTuple, Optional, Union

from ..exceptions import InvalidRequest, InvalidState
from .assembler import DEFAULT_MAX_FRAGMENTS
from .deflate import Deflate, DeflateOptions, negotiate_server
from .handshake import (
    HANDSHAKE_FIELDS,
    accept_headers,
    check_request,
    error_headers,
    reject_response,
    select_subprotocol,
)
from .headers import Headers, HeadersLike
from .http11 import RequestHead, serialize_response
from .protocol import Protocol, Side
from .request import parse_token_list_keep_case

__all__ = ["HandshakeState", "Accepted", "Rejected", "ServerHandshake", "rejection"]


class HandshakeState(enum.Enum):
    """Where a server handshake stands."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Accepted(NamedTuple):
    """The answer to an accepted upgrade: ``headers`` of the 101 response and the whole
    response as ``data``; the open connection's ``protocol``; the chosen
    ``subprotocol`` and the negotiated ``extensions`` value (or ``None``)."""

    headers: Headers
    data: bytes
    protocol: Protocol
    subprotocol: Optional[str]
    extensions: Optional[str]


class Rejected(NamedTuple):
    """An HTTP error answer: ``status``, ``headers`` (with ``Content-Type`` and
    ``Content-Length``), ``body``, and the whole response as ``data`` (which also says
    ``Connection: close``)."""

    status: int
    headers: Headers
    body: bytes
    data: bytes


class ServerHandshake:
    """One upgrade request, validated, waiting for the handler's decision.

    ``origins`` are the allowed ``Origin`` values (``None`` in it allows requests
    without one; ``origins=None`` allows all), ``subprotocols`` the ones the server
    supports in order of preference, ``deflate`` the server's permessage-deflate
    settings (``None``: no compression). Raises :class:`InvalidRequest`: 426, 405 or
    400 for a request RFC 6455 refuses (see
    :func:`~geventws.core.handshake.check_request`), 403 for an origin not allowed, 400
    for an invalid ``Sec-WebSocket-Extensions``.
    """

    __slots__ = ("_deflate", "_offered", "key", "state", "status", "supported")

    def __init__(
        self,
        head: RequestHead,
        *,
        origins: Optional[Union[frozenset[Optional[str]], Iterable[Optional[str]]]] = None,
        subprotocols: Iterable[str] = (),
        deflate: Optional[DeflateOptions] = None,
    ) -> None:
        fields = head.headers.select(HANDSHAKE_FIELDS)
        #: The client's ``Sec-WebSocket-Key``.
        self.key = check_request(head, fields)
        if origins is not None:
            origin = fields["origin"][0] if "origin" in fields else None
            if origin not in origins:
                raise InvalidRequest(403, f"origin {origin!r} not allowed")
        self._deflate: Optional[tuple[str, Deflate]] = None
        if deflate is not None and "sec-websocket-extensions" in fields:
            self._deflate = negotiate_server(head.headers, deflate)
        self._offered: Union[list[str], tuple[()]] = fields.get("sec-websocket-protocol", ())
        #: The subprotocols the server supports, in its order of preference.
        self.supported = tuple(subprotocols)
        self.state = HandshakeState.PENDING
        #: The HTTP status answered (101 once accepted), ``None`` while pending.
        self.status: Optional[int] = None

    @property
    def offered(self) -> list[str]:
        """The subprotocols the client offered, in its order."""
        return parse_token_list_keep_case(self._offered)

    def accept(
        self,
        subprotocol: Optional[str] = None,
        headers: Optional[HeadersLike] = None,
        *,
        max_size: Optional[int] = 2**20,
        max_fragments: Optional[int] = DEFAULT_MAX_FRAGMENTS,
    ) -> Accepted:
        """Accept the upgrade: the 101 answer and the open connection's protocol.

        ``subprotocol`` must be one the client offered (:class:`ValueError`
        otherwise); by default the first of :attr:`supported` the client offered is
        chosen. ``headers`` are added to the answer. ``max_size`` and ``max_fragments``
        are the protocol's limits. Raises :class:`InvalidState` once decided.
        """
        self._decide(HandshakeState.ACCEPTED, "accept")
        if subprotocol is None:
            if self.supported and self._offered:
                subprotocol = select_subprotocol(self.offered, self.supported)
        elif subprotocol not in self.offered:
            self.state = HandshakeState.PENDING
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        agreed, codec = self._deflate if self._deflate is not None else (None, None)
        fields = accept_headers(self.key, subprotocol, agreed, headers=headers)
        protocol = Protocol(
            Side.SERVER, max_size=max_size, max_fragments=max_fragments, deflate=codec
        )
        self.status = 101
        # Kept for the connection's life: let go of what is no longer needed.
        self._offered = ()
        self._deflate = None
        return Accepted(fields, serialize_response(101, fields), protocol, subprotocol, agreed)

    def reject(
        self,
        status: int = 403,
        body: Union[str, bytes] = b"",
        headers: Optional[HeadersLike] = None,
    ) -> Rejected:
        """Refuse the upgrade with an HTTP error ``status`` (3xx, 4xx or 5xx:
        :class:`ValueError` otherwise) and ``body``. Raises :class:`InvalidState` once
        decided."""
        if not 300 <= status <= 599:
            raise ValueError("reject() needs a 3xx, 4xx or 5xx status")
        self._decide(HandshakeState.REJECTED, "reject")
        self.status = status
        return rejection(status, body, headers)

    def _decide(self, state: HandshakeState, verb: str) -> None:
        if self.state is not HandshakeState.PENDING:
            raise InvalidState(f"cannot {verb}: handshake already {self.state.value}")
        self.state = state


def rejection(
    status: int, body: Union[str, bytes] = b"", headers: Optional[HeadersLike] = None
) -> Rejected:
    """An HTTP error answer that ends the connection (for refusals before any
    :class:`ServerHandshake` exists: a malformed request, too many connections)."""
    payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    fields = error_headers(payload, headers)
    return Rejected(status, fields, payload, reject_response(status, payload, headers))
