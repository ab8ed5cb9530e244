"""The blocking client: :func:`connect` opens a WebSocket connection from any greenlet.

It returns the same :class:`~geventws.Connection` as the server side. Frames are masked
with a fresh random key each (RFC 6455 §5.3). Works without monkey-patching: geventws
uses gevent's sockets and TLS explicitly.
"""

from __future__ import annotations

import logging
import socket as _socket
import ssl as _ssl
from typing import Any, Optional, Sequence, Union
from urllib.parse import urljoin, urlsplit, urlunsplit

import gevent
import gevent.socket
import gevent.ssl

from .connection import Connection, read_head
from .core.deflate import Deflate, DeflateOptions, client_offer, deflate_options, negotiate_client
from .core.handshake import check_response, client_request, generate_key
from .core.headers import Headers, HeadersLike
from .core.http11 import parse_response
from .core.protocol import Protocol, Side
from .core.uri import WebSocketURI, parse_uri
from .exceptions import InvalidHandshake, InvalidRequest, InvalidResponse, InvalidURI

__all__ = ["connect", "USER_AGENT", "MAX_REDIRECTS"]

logger = logging.getLogger("geventws.client")

#: The ``User-Agent`` sent unless ``headers`` or ``user_agent`` give another.
USER_AGENT = "geventws"
#: Redirects followed before giving up, as websockets' client does.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_BODY = 65536


def connect(
    uri: str,
    *,
    headers: Optional[HeadersLike] = None,
    origin: Optional[str] = None,
    subprotocols: Optional[Sequence[str]] = None,
    open_timeout: Optional[float] = 10.0,
    close_timeout: float = 10.0,
    ssl: Optional[_ssl.SSLContext] = None,
    server_hostname: Optional[str] = None,
    max_size: Optional[int] = 2**20,
    max_queue: Union[int, tuple[int, int]] = 16,
    ping_interval: Optional[float] = 20.0,
    ping_timeout: Optional[float] = 20.0,
    send_timeout: Optional[float] = None,
    compression: Optional[str] = "deflate",
    compression_window_bits: int = 12,
    compression_mem_level: int = 5,
    compression_threshold: int = 128,
    compression_level: int = -1,
    max_redirects: int = MAX_REDIRECTS,
    user_agent: Optional[str] = USER_AGENT,
) -> Connection:
    """Open a WebSocket connection to ``uri`` (``ws://`` or ``wss://``) and return it.

    ``headers`` are added to the upgrade request; ``origin`` sets ``Origin``;
    ``subprotocols`` are offered in order of preference. ``ssl`` is the
    :class:`ssl.SSLContext` for ``wss://`` (default: :func:`ssl.create_default_context`,
    which verifies certificates; the host name is sent as SNI and checked, or
    ``server_hostname`` instead). User info in the URI (``wss://user:pass@host/``) is sent
    as HTTP Basic authentication. Redirects (301, 302, 303, 307, 308) are followed up to
    ``max_redirects`` times.

    ``open_timeout`` bounds the whole opening: DNS, TCP, TLS, handshake and redirects.
    ``close_timeout``, ``max_size``, ``max_queue``, ``ping_interval``, ``ping_timeout``
    and ``send_timeout`` are as on the server.

    ``compression="deflate"`` (the default) offers permessage-deflate and lets the
    server bound the client's window; ``None`` offers nothing.
    ``compression_window_bits`` (default 12), ``compression_mem_level`` (default 5) and
    ``compression_threshold`` (default 128 bytes) and ``compression_level`` (default -1:
    zlib's) apply to what the client compresses.
    The negotiated value is in :attr:`Connection.extensions`.

    Raises :class:`~geventws.InvalidURI`; :class:`OSError` (including
    :class:`socket.gaierror` and :class:`ssl.SSLError`) for DNS, TCP and TLS failures;
    :class:`TimeoutError` when ``open_timeout`` passes;
    :class:`~geventws.InvalidResponse` for any answer other than a valid 101, carrying
    ``status``, ``headers`` and ``body`` (so a 401 or 403 is readable), including one
    that answers with extensions or parameters the client did not offer.
    """
    target = parse_uri(uri)
    options = deflate_options(
        compression,
        compression_window_bits,
        compression_mem_level,
        compression_threshold,
        compression_level,
    )
    with gevent.Timeout(open_timeout, TimeoutError(f"timed out opening {uri}")):
        for _ in range(max_redirects + 1):
            location = _open(
                target,
                headers=headers,
                origin=origin,
                subprotocols=subprotocols,
                ssl=ssl,
                server_hostname=server_hostname,
                user_agent=user_agent,
                deflate=options,
            )
            if isinstance(location, tuple):
                sock, head, leftover, subprotocol, deflate = location
                connection = Connection(
                    sock,
                    Side.CLIENT,
                    remote_address=_peer(sock),
                    max_size=max_size,
                    max_queue=max_queue,
                    close_timeout=close_timeout,
                    ping_interval=ping_interval,
                    ping_timeout=ping_timeout,
                    send_timeout=send_timeout,
                    logger=logger,
                )
                connection.subprotocol = subprotocol
                connection.response_headers = head.headers
                connection.extensions = None if deflate is None else deflate.agreed
                protocol = Protocol(Side.CLIENT, max_size=max_size, deflate=deflate)
                connection._start(protocol, leftover)
                logger.debug("connection opened: %s", uri)
                return connection
            logger.debug("redirected to %s", location)
            target = _redirect_target(target, location)
        raise InvalidHandshake(f"too many redirects (more than {max_redirects})")


def _peer(sock: Any) -> Optional[tuple[Any, ...]]:
    try:
        return tuple(sock.getpeername())
    except OSError:
        return None


def _open(
    target: WebSocketURI,
    *,
    headers: Optional[HeadersLike],
    origin: Optional[str],
    subprotocols: Optional[Sequence[str]],
    ssl: Optional[_ssl.SSLContext],
    server_hostname: Optional[str],
    user_agent: Optional[str],
    deflate: Optional[DeflateOptions],
) -> Any:
    """One attempt: the open socket with the response, subprotocol and codec, or a
    redirect's Location."""
    sock = gevent.socket.create_connection((target.host, target.port))
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if target.secure:
            context = ssl if ssl is not None else _ssl.create_default_context()
            sock = gevent.ssl.SSLSocket(
                sock=sock, server_hostname=server_hostname or target.host, _context=context
            )
        fields = Headers(headers) if headers is not None else Headers()
        if user_agent is not None and "User-Agent" not in fields:
            fields.add("User-Agent", user_agent)
        if target.authorization is not None and "Authorization" not in fields:
            fields.add("Authorization", target.authorization)
        key = generate_key()
        sock.sendall(
            client_request(
                target.host_header,
                target.resource_name,
                key,
                origin=origin,
                subprotocols=subprotocols,
                extensions=None if deflate is None else client_offer(deflate),
                headers=fields,
            )
        )
        try:
            received = read_head(sock)
        except InvalidRequest as exc:
            raise InvalidResponse(f"response head: {exc.message}") from None
        if received is None:
            raise InvalidResponse("connection closed before the handshake response")
        raw_head, leftover = received
        head = parse_response(raw_head)
        if head.status in _REDIRECTS and "Location" in head.headers:
            sock.close()
            return head.headers["Location"]
        if head.status != 101:
            body = _read_body(sock, head.headers, leftover)
            raise InvalidResponse(
                f"server rejected WebSocket connection: HTTP {head.status}",
                head.status,
                head.headers,
                body,
            )
        subprotocol = check_response(head, key, subprotocols)
        codec: Optional[Deflate] = None
        if deflate is not None:
            codec = negotiate_client(head.headers, deflate)
        elif head.headers.get_all("Sec-WebSocket-Extensions"):
            raise InvalidResponse("server chose an extension the client did not offer", 101)
        return sock, head, leftover, subprotocol, codec
    except BaseException:
        sock.close()
        raise


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
    except OSError:
        pass
    return b"".join(chunks)[:wanted]


def _redirect_target(current: WebSocketURI, location: str) -> WebSocketURI:
    scheme = "wss" if current.secure else "ws"
    host = f"[{current.host}]" if ":" in current.host else current.host
    base = f"{scheme}://{host}:{current.port}{current.resource_name}"
    absolute = urlsplit(urljoin(base, location))
    mapped = {"http": "ws", "https": "wss"}.get(absolute.scheme, absolute.scheme)
    if current.secure and mapped == "ws":
        raise InvalidURI(f"refusing a redirect from wss:// to ws://: {location}")
    return parse_uri(urlunsplit(absolute._replace(scheme=mapped)))
