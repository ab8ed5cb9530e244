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
from typing import TYPE_CHECKING, Any, Optional, Union

import gevent
from gevent import get_hub, getcurrent
from gevent.event import Event
from gevent.server import StreamServer
from greenlet import greenlet as _greenlet

from ._deadline import Deadline
from ._sockets import format_address, read_head, refuse, start_tls
from .connection import Connection
from .core.frames import CloseCode
from .core.http11 import RequestHead, parse_request
from .core.proxy import TrustedProxies, check_proxy_headers
from .core.proxy import resolve as resolve_client
from .core.request import Request
from .core.server_handshake import rejection
from .exceptions import InvalidRequest
from .options import ServerOptions, resolve
from .pubsub import Topics
from .upgrade import Handler, UpgradePolicy, end_connection, log_refusal, run_handler

if TYPE_CHECKING:
    import ssl

    from typing_extensions import Unpack

__all__ = ["WebSocketServer", "serve", "serve_connection", "Handler"]

logger = logging.getLogger("geventws.server")


class WebSocketServer(StreamServer):  # type: ignore[misc]
    """A WebSocket server on a gevent :class:`~gevent.server.StreamServer`.

    ``listener`` is an address ``(host, port)`` or a listening socket, ``handler`` a
    function ``handler(connection, request)``. The keyword ``options`` are those of
    the ``connection``, ``upgrade`` and ``server`` scopes of :doc:`/options` (the same
    names as :func:`serve` and the ``geventws serve`` flags); an unknown name raises
    :class:`TypeError`.

    ``start()``, ``serve_forever()``, ``stop(timeout)`` and the context-manager form
    come from gevent; :meth:`stop` first closes every connection with 1001.
    """

    def __init__(
        self,
        listener: Union[tuple[str, int], Any],
        handler: Handler,
        **options: Unpack[ServerOptions],
    ) -> None:
        values = resolve("server", options, "WebSocketServer")
        self.trusted_proxies = TrustedProxies(values["forwarded_allow_ips"])
        self.proxy_headers = check_proxy_headers(values["proxy_headers"])
        kwargs: dict[str, Any] = {}
        if values["backlog"] is not None:
            kwargs["backlog"] = values["backlog"]
        self._handlers = _Handlers()
        super().__init__(listener, self._serve_connection, spawn=None, **kwargs)
        self.handler = handler
        self.handshake_timeout: float = values["handshake_timeout"]
        self.close_timeout: float = values["close_timeout"]
        self.max_connections: Optional[int] = values["max_connections"]
        #: Origins, subprotocols, compression and the settings of each connection.
        self.policy = UpgradePolicy(values)
        # TLS is wrapped here rather than by StreamServer, so that a standard-library
        # context works without monkey-patching and the TLS handshake shares the deadline.
        self.ssl_context = values["ssl_context"]
        #: The connections whose handler is running, for broadcasts and metrics. A
        #: connection joins when its handler starts (its handshake may still be pending
        #: for a moment; :func:`~geventws.broadcast` skips those and closed ones) and
        #: leaves when its handler returns.
        self.connections: set[Connection] = set()
        # Whether accepted sockets come with TCP_NODELAY from the listener (Linux and
        # the BSDs copy it): None until the first TCP connection tells.
        self._nodelay_inherited: Optional[bool] = None

    # -- lifecycle ------------------------------------------------------------------

    def init_socket(self) -> None:
        """Make (or adopt) the listening socket, as gevent does, with ``TCP_NODELAY`` on
        it: where accepted sockets inherit it, they need no ``setsockopt`` each."""
        super().init_socket()
        if self.socket.family in (_socket.AF_INET, _socket.AF_INET6):
            try:
                self.socket.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def start(self) -> None:
        """Start accepting connections in the background (see gevent's ``start``)."""
        super().start()
        host, port = self.address[:2] if isinstance(self.address, tuple) else (self.address, "")
        logger.info("listening on %s", format_address((host, port)) if port else host)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, close every connection with 1001 (going away), wait up to
        ``timeout`` seconds (default ``close_timeout``) for the handlers to finish, then
        kill the ones still running; finally close the topics' broker."""
        if timeout is None:
            timeout = self.close_timeout
        self.close()
        closers = [
            gevent.spawn(conn.close, CloseCode.GOING_AWAY, "server shutting down")
            for conn in list(self.connections)
        ]
        if not self._handlers.join(timeout):
            self._handlers.kill(timeout=1)
        gevent.killall(closers, block=True, timeout=1)
        self.topics.close(timeout=min(timeout, 5.0))

    @property
    def topics(self) -> Topics:
        """The registry of this server's topics and its broker (``topics.broker``:
        ``healthy``, ``stats()``)."""
        return self.policy.topics

    def publish(
        self, topic: str, message: Union[str, bytes, bytearray, memoryview], binary: bool = False
    ) -> int:
        """Send ``message`` to every subscriber of ``topic`` (see
        :meth:`Connection.publish <geventws.Connection.publish>`), from any greenlet of
        the server's hub (a background ticker, a WSGI view); return the number of local
        deliveries. Never blocks."""
        data = message if isinstance(message, (str, bytes)) else bytes(message)
        return self.policy.topics.publish(topic, data, binary)

    # -- one connection ---------------------------------------------------------------

    def do_handle(self, sock: Any, address: Any) -> None:
        """Serve the socket ``accept`` returned in a greenlet of its own (what gevent's
        ``do_handle`` does, with plain calls in place of its two ``*args`` calls and no
        second ``close``: each of those calls keeps about 0.4 KiB more C stack saved
        per waiting connection). The greenlet is a plain ``greenlet`` whose parent is
        the hub, as :func:`gevent.spawn_raw` makes, without the attribute dictionary
        (spawn tree, loop) spawn_raw gives each one."""
        try:
            hub = get_hub()
            hub.loop.run_callback(
                _greenlet(_Handlers.serve, hub).switch, self._handlers, self, sock, address
            )
        except BaseException:
            self.do_close(sock, address)
            raise

    def _serve_connection(self, sock: Any, address: Any) -> None:
        inherited = self._nodelay_inherited
        if inherited is None and sock.family in (_socket.AF_INET, _socket.AF_INET6):
            try:  # the first TCP connection: did the listener's option carry over?
                inherited = bool(sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY))
            except OSError:
                inherited = False
            self._nodelay_inherited = inherited
        serve_connection(
            sock,
            address,
            self.handler,
            self.policy,
            handshake_timeout=self.handshake_timeout,
            trusted_proxies=self.trusted_proxies,
            proxy_headers=self.proxy_headers,
            ssl_context=self.ssl_context,
            max_connections=self.max_connections,
            active=len(self._handlers),
            connections=self.connections,
            set_nodelay=not inherited,
        )


class _Handlers:
    """The greenlets serving connections, one per connection: plain greenlets rather
    than a pool of :class:`gevent.Greenlet` (which costs about 0.8 KiB and a few
    microseconds more per connection), counted for ``max_connections`` and waited for,
    then killed, by :meth:`WebSocketServer.stop`."""

    __slots__ = ("_idle", "running")

    def __init__(self) -> None:
        #: The greenlets serving a connection now.
        self.running: set[Any] = set()
        self._idle: Optional[Event] = None  # set once none runs, while stop() waits

    def __len__(self) -> int:
        return len(self.running)

    def serve(self, server: WebSocketServer, sock: Any, address: Any) -> None:
        """Serve one accepted socket in this greenlet, counted as running meanwhile;
        :func:`serve_connection` closes it (``GreenletExit`` is passed on)."""
        current = getcurrent()
        self.running.add(current)
        try:
            server._serve_connection(sock, address)  # closes sock, whatever happens
        except Exception:  # a bug of ours: say so, and go on serving the others
            logger.exception("unexpected error serving a connection")
            sock.close()  # (in case the bug struck before serve_connection's own close)
        finally:
            self.running.discard(current)
            if not self.running and self._idle is not None:
                self._idle.set()

    def join(self, timeout: Optional[float]) -> bool:
        """Wait until no connection is being served; whether that happened in time."""
        if not self.running:
            return True
        idle = self._idle
        if idle is None or idle.is_set():  # one event for every greenlet waiting
            idle = self._idle = Event()
        return bool(idle.wait(timeout))

    def kill(self, timeout: float) -> None:
        """Kill the greenlets still serving (``GreenletExit`` in each: their sockets
        close in ``finally`` blocks) and wait for them a moment."""
        for greenlet in list(self.running):
            gevent.kill(greenlet)
        self.join(timeout)


def serve_connection(
    sock: Any,
    address: Any,
    handler: Handler,
    policy: UpgradePolicy,
    *,
    handshake_timeout: float,
    trusted_proxies: TrustedProxies,
    proxy_headers: Optional[str],
    ssl_context: Optional[ssl.SSLContext] = None,
    max_connections: Optional[int] = None,
    active: int = 1,
    connections: Optional[set[Connection]] = None,
    set_nodelay: bool = True,
) -> None:
    """Serve one incoming connection from ``address`` on ``sock``, as
    :class:`WebSocketServer` does for each connection it accepts (and
    :class:`geventws.testing.TestClient` for each of its own).

    Sets ``TCP_NODELAY`` on a TCP socket (unless ``set_nodelay`` is false: the socket has
    it already). Refuses it with 503 when ``active`` (the connections being served, this one
    included) is over ``max_connections``; wraps it in TLS with ``ssl_context``; reads
    the upgrade request within ``handshake_timeout``, with the client's address and
    scheme resolved through ``trusted_proxies`` and ``proxy_headers``; answers a bad
    request with its HTTP error; otherwise makes the connection with ``policy`` and
    runs ``handler`` on it (:func:`~geventws.upgrade.run_handler`), the connection being
    in ``connections`` meanwhile, and releases it
    (:func:`~geventws.upgrade.end_connection`). Logs on ``geventws.server``.

    Returns when the handler has returned and the connection is released; ``sock`` is
    closed whatever happens, ``GreenletExit`` (a server stopping) included, which
    propagates.
    """
    started = time.monotonic()
    connection: Optional[Connection] = None
    try:
        if set_nodelay and sock.family in (_socket.AF_INET, _socket.AF_INET6):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if max_connections is not None and active > max_connections:
            _refuse_busy(sock, address, max_connections)
            return
        connection = _handshake(
            sock,
            address,
            policy,
            started=started,
            handshake_timeout=handshake_timeout,
            trusted_proxies=trusted_proxies,
            proxy_headers=proxy_headers,
            ssl_context=ssl_context,
        )
        if connection is not None:
            if connections is not None:
                connections.add(connection)
            run_handler(handler, connection, logger)
    finally:
        if connection is None:
            sock.close()
        else:
            if connections is not None:
                connections.discard(connection)
            end_connection(connection, started)


def _refuse_busy(sock: Any, address: Any, max_connections: int) -> None:
    logger.warning(
        "too many connections (%d): refusing %s with 503",
        max_connections,
        format_address(address),
    )
    # Read the request first (briefly): answering before it arrived lets the
    # client's request hit a closing socket, which resets the connection and loses
    # the 503.
    try:
        read_head(sock, deadline=Deadline(1.0))
    except (OSError, InvalidRequest, TimeoutError):
        pass
    answer = rejection(503, "Too many connections, retry later\n", [("Retry-After", "5")])
    refuse(sock, answer, 1.0)


def _handshake(
    sock: Any,
    address: Any,
    policy: UpgradePolicy,
    *,
    started: float,
    handshake_timeout: float,
    trusted_proxies: TrustedProxies,
    proxy_headers: Optional[str],
    ssl_context: Optional[ssl.SSLContext],
) -> Optional[Connection]:
    """Read and validate the upgrade request; answer errors; return the connection
    (not yet accepted), or ``None`` once a refused or missing request is dealt with
    and the socket closed.

    The TLS handshake, if any, and the request must both arrive within
    ``handshake_timeout``; whatever goes wrong, every socket made here is closed
    before this returns.
    """
    connection: Optional[Connection] = None
    head: Optional[RequestHead] = None
    deadline = Deadline(handshake_timeout, "handshake timed out")
    try:
        if ssl_context is not None:
            with deadline.timeout():
                sock = start_tls(sock, ssl_context, server_side=True)
        received = read_head(sock, deadline=deadline)
        if received is None:
            return None
        raw_head, leftover = received
        head = parse_request(raw_head)
        client, scheme = resolve_client(
            address,
            head.headers,
            trusted_proxies,
            scheme="ws" if ssl_context is None else "wss",
            proxy_headers=proxy_headers,
        )
        request = Request(head.method, head.target, head.headers, client, scheme=scheme)
        connection = policy.open(sock, head, request, log=logger, leftover=leftover)
        return connection
    except TimeoutError:
        logger.info("handshake timed out: %s", format_address(address))
        return None
    except InvalidRequest as exc:
        log_refusal(address, exc, started, head)
        answer = rejection(exc.status, exc.message + "\n", exc.headers)
        refuse(sock, answer, policy.settings.close_timeout)
        return None
    except OSError as exc:  # includes ssl.SSLError
        logger.debug("handshake aborted: %s %s", format_address(address), exc)
        return None
    finally:
        if connection is None:
            sock.close()


def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Unpack[ServerOptions],
) -> None:
    """Run a :class:`WebSocketServer` for ``handler`` on ``host``:``port`` until it is
    stopped. ``options`` are :class:`WebSocketServer`'s."""
    server = WebSocketServer((host, port), handler, **options)
    server.serve_forever()
