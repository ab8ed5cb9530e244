"""The blocking client: :func:`connect` opens a WebSocket connection from any greenlet.

It returns the same :class:`~geventws.Connection` as the server side. Frames are masked
with a fresh random key each (RFC 6455 §5.3). Works without monkey-patching: geventws
uses gevent's sockets and TLS explicitly.
"""

from __future__ import annotations

import logging
import socket as _socket
import ssl as _ssl
from typing import TYPE_CHECKING, Any, Optional, Union

import gevent.socket

from ._deadline import Deadline
from ._sockets import read_head, start_tls
from .connection import Connection
from .core.client_handshake import ClientHandshake, Opened, Redirect
from .core.headers import Headers
from .core.http11 import parse_response
from .core.protocol import Side
from .exceptions import InvalidHandshake, InvalidRequest, InvalidResponse
from .options import ClientOptions, ConnectionSettings, resolve

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["connect"]

logger = logging.getLogger("geventws.client")

_MAX_BODY = 65536


def connect(uri: str, **options: Unpack[ClientOptions]) -> Connection:
    """Open a WebSocket connection to ``uri`` (``ws://`` or ``wss://``) and return it.

    The keyword ``options`` are those of the ``connection`` and ``client`` scopes of
    :doc:`/options`: ``headers`` are added to the upgrade request; ``origin`` sets
    ``Origin``; ``subprotocols`` are offered in order of preference; ``ssl`` is the
    :class:`ssl.SSLContext` for ``wss://`` (default: :func:`ssl.create_default_context`,
    which verifies certificates; the host name is sent as SNI and checked, or
    ``server_hostname`` instead). User info in the URI (``wss://user:pass@host/``) is
    sent as HTTP Basic authentication. Redirects (301, 302, 303, 307, 308) are followed
    up to ``max_redirects`` times; a redirect to another origin drops
    ``Authorization``, ``Cookie``, ``Proxy-Authorization`` and ``sensitive_headers``
    (see :mod:`geventws.core.client_handshake`). ``open_timeout`` bounds the whole
    opening: DNS, TCP, TLS, handshake and redirects. ``compression="deflate"`` (the
    default) offers permessage-deflate; the negotiated value is in
    :attr:`Connection.extensions`.

    Raises :class:`~geventws.InvalidURI`; :class:`OSError` (including
    :class:`socket.gaierror` and :class:`ssl.SSLError`) for DNS, TCP and TLS failures;
    :class:`TimeoutError` when ``open_timeout`` passes;
    :class:`~geventws.InvalidResponse` for any answer other than a valid 101, carrying
    ``status``, ``headers`` and ``body`` (so a 401 or 403 is readable), including one
    that answers with extensions or parameters the client did not offer;
    :class:`TypeError` for an unknown option.
    """
    values = resolve("client", options, "connect")
    settings = ConnectionSettings(values)
    handshake = ClientHandshake(
        uri,
        headers=values["headers"],
        origin=values["origin"],
        subprotocols=values["subprotocols"],
        deflate=settings.deflate,
        user_agent=values["user_agent"],
        sensitive_headers=values["sensitive_headers"],
        server_hostname=values["server_hostname"],
    )
    max_redirects: int = values["max_redirects"]
    with Deadline(values["open_timeout"], f"timed out opening {uri}").timeout():
        for _ in range(max_redirects + 1):
            outcome = _attempt(handshake, values["ssl"], settings)
            if isinstance(outcome, str):
                logger.debug("redirected to %s", outcome)
                handshake = handshake.redirect(outcome)
                continue
            sock, opened, leftover = outcome
            connection = Connection(
                sock,
                Side.CLIENT,
                settings,
                protocol=opened.protocol,
                remote_address=_peer(sock),
                leftover=leftover,
                logger=logger,
            )
            connection.subprotocol = opened.subprotocol
            connection.response_headers = opened.headers
            connection.extensions = opened.extensions
            logger.debug("connection opened: %s", uri)
            return connection
        raise InvalidHandshake(f"too many redirects (more than {max_redirects})")


def _peer(sock: Any) -> Optional[tuple[Any, ...]]:
    try:
        return tuple(sock.getpeername())
    except OSError:
        return None


def _attempt(
    handshake: ClientHandshake, context: Optional[_ssl.SSLContext], settings: ConnectionSettings
) -> Union[str, tuple[Any, Opened, bytes]]:
    """One attempt: the open socket with the handshake's outcome and the bytes read
    past the response, or a redirect's ``Location``. The socket is closed unless it is
    returned."""
    target = handshake.uri
    sock = gevent.socket.create_connection((target.host, target.port))
    returned = False
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if target.secure:
            tls_context = context if context is not None else _ssl.create_default_context()
            sock = start_tls(
                sock, tls_context, server_side=False, server_hostname=handshake.server_hostname
            )
        outcome, leftover = exchange_handshake(sock, handshake, settings)
        if not isinstance(outcome, Opened):
            return outcome.location
        returned = True
        return sock, outcome, leftover
    finally:
        if not returned:
            sock.close()


def exchange_handshake(
    sock: Any, handshake: ClientHandshake, settings: ConnectionSettings
) -> tuple[Union[Opened, Redirect], bytes]:
    """The opening handshake on ``sock`` (connected, TLS done): the request sent, the
    response read and checked; the outcome and the bytes read past the response (also
    :class:`geventws.testing.TestClient`'s). Raises :class:`~geventws.InvalidResponse`,
    with the body of an error answer; the caller sets the deadline."""
    sock.sendall(handshake.request())
    try:
        received = read_head(sock)
    except InvalidRequest as exc:
        raise InvalidResponse(f"response head: {exc.message}") from None
    if received is None:
        raise InvalidResponse("connection closed before the handshake response")
    raw_head, leftover = received
    head = parse_response(raw_head)
    try:
        outcome = handshake.receive_response(
            head, max_size=settings.max_size, max_fragments=settings.max_fragments
        )
    except InvalidResponse as exc:
        if exc.status is not None and exc.status != 101:
            exc.body = _read_body(sock, head.headers, leftover)
        raise
    return outcome, leftover


def _read_body(sock: Any, headers: Headers, data: bytes) -> bytes:
    """The body of an error response, at most 64 KiB (under the caller's deadline)."""
    length = headers.get("Content-Length")
    wanted = int(length) if length is not None and length.isdigit() else _MAX_BODY
    wanted = min(wanted, _MAX_BODY)
    chunks = [data]
    size = len(data)
    try:
        while size < wanted:
            chunk = sock.recv(wanted - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except TimeoutError:
        raise
    except OSError:
        pass
    return b"".join(chunks)[:wanted]
