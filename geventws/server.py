"""The WebSocket server: a :class:`gevent.server.StreamServer` that runs one greenlet per
connection, reads the upgrade request under a deadline, and calls
``handler(connection, request)``.

The connection is always closed when the handler ends: with 1000 when it returns, with
1011 (and the traceback logged at ERROR) when it raises. A handler that raises before the
handshake was answered gets its client a 500 instead.
"""

from __future__ import annotations

import logging
import socket as _socket
import time
from typing import Any, Callable, Iterable, Optional, Union

import gevent
import gevent.ssl
from gevent.pool import Pool
from gevent.server import StreamServer

from .connection import (
    Connection,
    HandshakeAnswer,
    _format_address,
    end_connection,
    log_refusal,
    read_head,
    refuse,
    run_handler,
)
from .core.deflate import deflate_options, negotiate_server
from .core.frames import CloseCode
from .core.handshake import check_request
from .core.http11 import RequestHead, parse_request
from .core.protocol import Side
from .core.proxy import DEFAULT_FORWARDED_ALLOW_IPS, TrustedProxies, check_proxy_headers, resolve
from .core.request import Request
from .exceptions import InvalidRequest

__all__ = ["WebSocketServer", "serve", "Handler", "DEFAULT_MAX_SIZE"]

logger = logging.getLogger("geventws.server")

Handler = Callable[[Connection, Request], Any]

#: Default limit on a message's size: 1 MiB.
DEFAULT_MAX_SIZE = 2**20


class WebSocketServer(StreamServer):  # type: ignore[misc]
    """A WebSocket server on a gevent :class:`~gevent.server.StreamServer`.

    ``listener`` is an address ``(host, port)`` or a listening socket, ``handler`` a
    function ``handler(connection, request)``. Options (the same names as
    :func:`serve` and the ``geventws serve`` flags):

    ``origins``
        Allowed ``Origin`` values; other origins get HTTP 403 before the handler runs.
        Include ``None`` to allow clients that send no ``Origin`` (non-browsers).
        ``None`` (the default) allows every origin.
    ``subprotocols``
        Subprotocols the server supports, in order of preference; picked automatically
        at :meth:`~Connection.accept` unless the handler chooses.
    ``max_size``
        The largest message accepted, in bytes (default 1 MiB); over it the connection
        closes with 1009. ``None`` disables the limit.
    ``max_queue``
        How many received messages may wait for the handler before geventws stops
        reading the socket (default 16); reading resumes at a quarter of it, or give
        ``(high, low)``.
    ``handshake_timeout``
        Seconds a client has to send its complete upgrade request (default 10).
    ``close_timeout``
        Seconds to wait for the closing handshake and for writes during it (default 10).
    ``ping_interval``, ``ping_timeout``
        Keepalive: send a ping every ``ping_interval`` seconds (default 20); a peer that
        doesn't answer within ``ping_timeout`` (default 20) is closed with 1011.
        ``None`` turns either off.
    ``send_timeout``
        Seconds a write may wait for a client that doesn't read before the connection
        is closed with 1008 (default ``None``: ``send()`` waits as long as it takes).
    ``max_connections``
        Connections served at once (handshakes included); beyond it new clients get
        HTTP 503 with ``Retry-After`` (default ``None``: no limit).
    ``compression``
        ``"deflate"`` (the default) negotiates permessage-deflate (RFC 7692) with
        clients that offer it; ``None`` turns compression off.
    ``compression_window_bits``, ``compression_mem_level``
        zlib's LZ77 window (9-15, default 12: 4 KiB) and hash-table size (1-9, default
        5) for compressing; the server also asks clients to compress with that window
        when they let it. Smaller means less memory per connection and less compression.
    ``compression_threshold``
        Messages shorter than this many bytes are sent uncompressed (default 128).
    ``compression_level``
        zlib's compression level, 0-9 (default -1: zlib's default, 6). Lower is
        faster with less compression.
    ``ssl_context``
        An :class:`ssl.SSLContext` to serve ``wss://``.
    ``forwarded_allow_ips``, ``proxy_headers``
        Reverse proxies whose headers tell the client's address and scheme
        (``request.remote_address``, ``request.scheme``): IP addresses and networks, or
        ``"*"`` (default ``"127.0.0.1"``); and which headers they set: ``"x-forwarded"``
        (the default), ``"forwarded"`` (RFC 7239) or ``None``. See
        :mod:`geventws.core.proxy`.

    ``start()``, ``serve_forever()``, ``stop(timeout)`` and the context-manager form
    come from gevent; :meth:`stop` first closes every connection with 1001.
    """

    def __init__(
        self,
        listener: Union[tuple[str, int], Any],
        handler: Handler,
        *,
        origins: Optional[Iterable[Optional[str]]] = None,
        subprotocols: Optional[Iterable[str]] = None,
        max_size: Optional[int] = DEFAULT_MAX_SIZE,
        max_queue: Union[int, tuple[int, int]] = 16,
        handshake_timeout: float = 10.0,
        close_timeout: float = 10.0,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        send_timeout: Optional[float] = None,
        max_connections: Optional[int] = None,
        compression: Optional[str] = "deflate",
        compression_window_bits: int = 12,
        compression_mem_level: int = 5,
        compression_threshold: int = 128,
        compression_level: int = -1,
        ssl_context: Any = None,
        backlog: Optional[int] = None,
        forwarded_allow_ips: Union[str, Iterable[str]] = DEFAULT_FORWARDED_ALLOW_IPS,
        proxy_headers: Optional[str] = "x-forwarded",
    ) -> None:
        self.trusted_proxies = TrustedProxies(forwarded_allow_ips)
        self.proxy_headers = check_proxy_headers(proxy_headers)
        kwargs: dict[str, Any] = {}
        if backlog is not None:
            kwargs["backlog"] = backlog
        super().__init__(listener, self._serve_connection, spawn=Pool(), **kwargs)
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.max_connections = max_connections
        #: Origins, subprotocols, compression and the options of each connection.
        self.policy = UpgradePolicy(
            origins=origins,
            subprotocols=subprotocols,
            max_size=max_size,
            max_queue=max_queue,
            close_timeout=close_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            send_timeout=send_timeout,
            compression=compression,
            compression_window_bits=compression_window_bits,
            compression_mem_level=compression_mem_level,
            compression_threshold=compression_threshold,
            compression_level=compression_level,
        )
        # TLS is wrapped here rather than by StreamServer, so that a standard-library
        # context works without monkey-patching and the TLS handshake shares the deadline.
        self.ssl_context = ssl_context
        #: The connections whose handler is running, for broadcasts and metrics. A
        #: connection joins when its handler starts (its handshake may still be pending
        #: for a moment; :func:`~geventws.broadcast` skips those and closed ones) and
        #: leaves when its handler returns.
        self.connections: set[Connection] = set()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start accepting connections in the background (see gevent's ``start``)."""
        super().start()
        host, port = self.address[:2] if isinstance(self.address, tuple) else (self.address, "")
        logger.info("listening on %s", _format_address((host, port)) if port else host)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait up to
        ``timeout`` seconds (default ``close_timeout``) for the handlers to finish, then
        kill the ones still running."""
        if timeout is None:
            timeout = self.close_timeout
        self.close()
        closers = [
            gevent.spawn(conn.close, CloseCode.GOING_AWAY, "server shutting down")
            for conn in list(self.connections)
        ]
        super().stop(timeout=timeout)
        gevent.killall(closers, block=True, timeout=1)

    # -- one connection ---------------------------------------------------------------

    def _serve_connection(self, sock: Any, address: Any) -> None:
        started = time.monotonic()
        connection: Optional[Connection] = None
        try:
            if sock.family in (_socket.AF_INET, _socket.AF_INET6):
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            if self.max_connections is not None and len(self.pool) > self.max_connections:
                logger.warning(
                    "too many connections (%d): refusing %s with 503",
                    self.max_connections,
                    _format_address(address),
                )
                # Read the request first (briefly): answering before it arrived lets the
                # client's request hit a closing socket, which resets the connection and
                # loses the 503.
                try:
                    with gevent.Timeout(1.0, False):
                        read_head(sock)
                except (OSError, InvalidRequest):
                    pass
                refuse(
                    sock, 503, "Too many connections, retry later\n", [("Retry-After", "5")], 1.0
                )
                return
            connection = self._handshake(sock, address)
            if connection is not None:
                self._run_handler(connection)
        finally:
            if connection is None:
                sock.close()
            else:
                self.connections.discard(connection)
                end_connection(connection, started, logger)

    def _handshake(self, sock: Any, address: Any) -> Optional[Connection]:
        """Read and validate the upgrade request; answer errors; return the connection
        (not yet accepted), or ``None`` once a refused or missing request is dealt with
        and the socket closed.

        The TLS handshake, if any, and the request must both arrive within
        ``handshake_timeout``.
        """
        connection: Optional[Connection] = None
        timeout = gevent.Timeout(self.handshake_timeout)
        timeout.start()
        try:
            if self.ssl_context is not None:
                sock = gevent.ssl.SSLSocket(sock=sock, server_side=True, _context=self.ssl_context)
            received = read_head(sock)
            if received is None:
                return None
            timeout.close()
            raw_head, leftover = received
            head = parse_request(raw_head)
            client, scheme = resolve(
                address,
                head.headers,
                self.trusted_proxies,
                scheme="ws" if self.ssl_context is None else "wss",
                proxy_headers=self.proxy_headers,
            )
            request = Request(head.method, head.target, head.headers, client, scheme=scheme)
            connection = self.policy.open(sock, head, request, leftover=leftover)
            return connection
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            logger.info("handshake timed out: %s", _format_address(address))
            return None
        except InvalidRequest as exc:
            log_refusal(logger, address, exc)
            refuse(sock, exc.status, exc.message + "\n", exc.headers, self.close_timeout)
            return None
        except OSError as exc:  # includes ssl.SSLError
            logger.debug("handshake aborted: %s %s", _format_address(address), exc)
            return None
        finally:
            timeout.close()
            if connection is None:
                sock.close()

    def _run_handler(self, connection: Connection) -> None:
        self.connections.add(connection)
        run_handler(self.handler, connection, logger)


class UpgradePolicy:
    """What a server decides about every upgrade request, and how it makes its
    connections; shared by :class:`WebSocketServer` and
    :class:`geventws.wsgi.WebSocketMiddleware`, whose options of the same names it
    takes (see :class:`WebSocketServer`)."""

    def __init__(
        self,
        *,
        origins: Optional[Iterable[Optional[str]]] = None,
        subprotocols: Optional[Iterable[str]] = None,
        max_size: Optional[int] = DEFAULT_MAX_SIZE,
        max_queue: Union[int, tuple[int, int]] = 16,
        close_timeout: float = 10.0,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        send_timeout: Optional[float] = None,
        compression: Optional[str] = "deflate",
        compression_window_bits: int = 12,
        compression_mem_level: int = 5,
        compression_threshold: int = 128,
        compression_level: int = -1,
    ) -> None:
        self.origins = None if origins is None else frozenset(origins)
        self.subprotocols = tuple(subprotocols or ())
        #: The permessage-deflate settings, or ``None`` when compression is off.
        self.deflate_options = deflate_options(
            compression,
            compression_window_bits,
            compression_mem_level,
            compression_threshold,
            compression_level,
        )
        #: The keyword arguments of every :class:`Connection` made under this policy.
        self.connection_options: dict[str, Any] = {
            "max_size": max_size,
            "max_queue": max_queue,
            "close_timeout": close_timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "send_timeout": send_timeout,
        }

    def open(
        self,
        sock: Any,
        head: RequestHead,
        request: Request,
        *,
        log: logging.Logger = logger,
        leftover: bytes = b"",
        answer: Optional[HandshakeAnswer] = None,
        subprotocols: Optional[tuple[str, ...]] = None,
    ) -> Connection:
        """Check an upgrade request and make its connection, ready to accept.

        Checks RFC 6455 (:func:`check_request`), the allowed ``origins`` (403) and the
        compression offers (400 when invalid), raising :class:`InvalidRequest` with
        the status to answer. ``log`` is the connection's logger; ``leftover`` the
        bytes read past the request; ``answer`` replaces writing the handshake's answer
        to ``sock``; ``subprotocols`` replaces the policy's own."""
        key = check_request(head)
        if self.origins is not None and request.origin not in self.origins:
            raise InvalidRequest(403, f"origin {request.origin!r} not allowed")
        deflate = None
        if self.deflate_options is not None:
            deflate = negotiate_server(head.headers, self.deflate_options)
        connection = Connection(
            sock,
            Side.SERVER,
            request=request,
            remote_address=request.remote_address,
            logger=log,
            **self.connection_options,
        )
        supported = self.subprotocols if subprotocols is None else subprotocols
        connection._prepare(key, leftover, supported, deflate, answer)
        return connection


def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Any,
) -> None:
    """Run a :class:`WebSocketServer` for ``handler`` on ``host``:``port`` until it is
    stopped. ``options`` are :class:`WebSocketServer`'s keyword arguments."""
    server = WebSocketServer((host, port), handler, **options)
    server.serve_forever()
