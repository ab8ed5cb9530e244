"""WebSocket routes beside a WSGI application: :class:`WebSocketMiddleware` (see
:mod:`geventws.wsgi` for how the connection is taken over), and :func:`shutdown`."""

from __future__ import annotations

import logging
import socket as _socket
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

import gevent

from ..connection import Connection
from ..core.frames import CloseCode
from ..exceptions import InvalidRequest
from ..options import UpgradeOptions, resolve
from ..pubsub import Topics
from ..upgrade import (
    Handler,
    UpgradePolicy,
    end_connection,
    log_access,
    log_refusal,
    run_handler,
)
from .deadline import end_idle_keepalive
from .environ import (
    LEGACY_DETACH,
    WSGIAnswer,
    error_response,
    is_websocket_request,
    reader_of,
    request_from_environ,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["WSGIApp", "WebSocketMiddleware", "shutdown"]

logger = logging.getLogger("geventws.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Every WebSocket connection opened through this module in this process, for
#: :func:`shutdown`.
_LIVE: weakref.WeakSet[Connection] = weakref.WeakSet()

_TAKEOVER_HELP = (
    "this WSGI server does not let geventws take the connection over: run the "
    "application on gevent.pywsgi.WSGIServer, or under gunicorn with "
    "-k geventws.worker.GeventWebSocketWorker (or -k gevent_pywsgi)"
)


class _Upgrade:
    """One upgrade request served through WSGI: the connection (registered in the
    middleware's and the process's live sets until :meth:`release`) and its answer."""

    def __init__(
        self, registry: set[Connection], connection: Connection, answer: WSGIAnswer
    ) -> None:
        self.registry = registry
        self.connection = connection
        self.answer = answer
        self.started = time.monotonic()
        registry.add(connection)
        _LIVE.add(connection)

    def release(self) -> None:
        """After the handler: unregister; once taken over, close the socket and the
        server's reader, which ends the WSGI server's keep-alive loop (it writes and
        reads nothing more on this connection)."""
        self.registry.discard(self.connection)
        _LIVE.discard(self.connection)
        if self.answer.accepted:
            end_connection(self.connection, self.started)
            self.answer.reader.close()
        else:  # answered over HTTP: the WSGI server writes it and goes on
            request = self.connection.request
            assert request is not None
            status = self.connection.status
            log_access(
                request.remote_address,
                request.method,
                request.target,
                status,
                started=self.started,
            )

    def body(self) -> list[bytes]:
        """The WSGI response body: a refusal's, or nothing after a 101."""
        return [self.answer.body] if self.answer.body is not None else []


class WebSocketMiddleware:
    """Serve WebSocket handlers beside a WSGI application on the same server and port.

    ``routes`` is either one handler, which gets every WebSocket upgrade request, or a
    mapping of paths (``PATH_INFO``, exact match) to handlers. Requests that are not
    for a handler go to ``app`` untouched. A non-upgrade request to a WebSocket route
    gets 426 Upgrade Required when there is no ``app`` (``app=None``) or when
    ``routes`` is a mapping.

    Options: those of the ``connection`` and ``upgrade`` scopes of :doc:`/options`,
    with the same meanings and defaults as on :class:`~geventws.WebSocketServer`. The
    WSGI server owns accepting, TLS and the request deadline, so ``handshake_timeout``,
    ``max_connections`` and ``ssl_context`` are its business.

    ``connections`` is the live set of open WebSocket connections, as on the standalone
    server; :meth:`close_all` closes them (with 1001 by default) for a graceful stop.
    """

    def __init__(
        self,
        app: Optional[WSGIApp],
        routes: Union[Handler, Mapping[str, Handler]],
        **options: Unpack[UpgradeOptions],
    ) -> None:
        self.app = app
        if callable(routes):
            self._default: Optional[Handler] = routes
            self.routes: dict[str, Handler] = {}
        else:
            self._default = None
            self.routes = dict(routes)
        #: Origins, subprotocols, compression and the settings of each connection.
        self.policy = UpgradePolicy(resolve("middleware", options, "WebSocketMiddleware"))
        #: The open WebSocket connections whose handler is running.
        self.connections: set[Connection] = set()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        handler = self.routes.get(environ.get("PATH_INFO", ""), self._default)
        upgrade = is_websocket_request(environ)
        if handler is not None and upgrade:
            return self.upgrade(environ, start_response, handler)
        if handler is not None and (self.app is None or self.routes):
            return error_response(
                start_response,
                426,
                "this endpoint only speaks WebSocket: send an upgrade request\n",
                [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
        if self.app is None:
            return error_response(start_response, 404, "Not Found\n")
        return self.app(environ, start_response)

    def upgrade(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        handler: Handler,
    ) -> list[bytes]:
        """Handle one upgrade request with ``handler`` and return the WSGI response
        body (empty once the connection was taken over). Usable directly from a WSGI
        view: ``return middleware.upgrade(environ, start_response, handle)``."""
        detach = environ.pop(LEGACY_DETACH, None)
        if detach is not None:
            detach()
        opened = self.open(environ, start_response)
        if isinstance(opened, list):
            return opened
        try:
            run_handler(handler, opened.connection, logger)
        finally:
            opened.release()
        return opened.body()

    def open(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        subprotocols: Optional[tuple[str, ...]] = None,
    ) -> Union[list[bytes], _Upgrade]:
        """Validate an upgrade request: the error response's body, or the connection
        ready to accept (its handshake answered through ``start_response``)."""
        started = time.monotonic()
        head, request = request_from_environ(environ)
        reader = reader_of(environ)
        try:
            if reader is None:
                logger.error("%s", _TAKEOVER_HELP)
                raise InvalidRequest(500, "Internal Server Error")
            if environ.get("SERVER_PROTOCOL", "HTTP/1.1") == "HTTP/1.0":
                raise InvalidRequest(400, "WebSocket needs HTTP/1.1 (RFC 6455 §4.1)")
            sock = reader.raw._sock  # type: ignore[attr-defined]
            answer = WSGIAnswer(start_response, reader)
            connection = self.policy.open(
                sock, head, request, log=logger, answer=answer, subprotocols=subprotocols
            )
        except InvalidRequest as exc:
            log_refusal(request.remote_address, exc, started, head)
            return error_response(start_response, exc.status, exc.message + "\n", exc.headers)
        if sock.family in (_socket.AF_INET, _socket.AF_INET6):
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return _Upgrade(self.connections, connection, answer)

    @property
    def topics(self) -> Topics:
        """The registry of the topics of this middleware's connections, and its broker."""
        return self.policy.topics

    def publish(
        self, topic: str, message: Union[str, bytes, bytearray, memoryview], binary: bool = False
    ) -> int:
        """Send ``message`` to every subscriber of ``topic``, from any greenlet (a WSGI
        view, a background job); return the number of local deliveries. Never blocks.
        See :meth:`Connection.publish <geventws.Connection.publish>`."""
        data = message if isinstance(message, (str, bytes)) else bytes(message)
        return self.policy.topics.publish(topic, data, binary)

    def close_all(
        self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Close every open connection of this middleware at once (in parallel
        greenlets) and wait for their closing handshakes, each bounded by
        ``close_timeout``."""
        _close(list(self.connections), code, reason)


def _close(connections: list[Connection], code: int, reason: str) -> None:
    """Close the open ones of ``connections`` in parallel. A connection whose handshake
    is still pending is left to its handler: answering it belongs to the greenlet that
    runs the WSGI request, and it is closed when the handler ends."""
    greenlets = [
        gevent.spawn(connection.close, code, reason)
        for connection in connections
        if not connection.handshake_pending
    ]
    gevent.joinall(greenlets)


def shutdown(code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
    """For a graceful stop of this process (the gunicorn worker calls it on SIGTERM):
    close every WebSocket connection opened through this module (middleware and
    :class:`WebSocketHandler` alike), in parallel, and the idle HTTP keep-alive
    connections of :class:`~geventws.wsgi.RequestDeadlineHandler`, the others after
    their response (:func:`~geventws.wsgi.deadline.end_idle_keepalive`), so the worker
    doesn't wait for them."""
    end_idle_keepalive()
    _close(list(_LIVE), code, reason)
