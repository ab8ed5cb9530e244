"""WebSocket routes beside a WSGI application, on one port: gevent.pywsgi and gunicorn.

:class:`WebSocketMiddleware` wraps a WSGI application (plain WSGI, Flask, Django...).
Upgrade requests for its routes run ``handler(connection, request)`` with the same
:class:`~geventws.Connection` and :class:`~geventws.Request` as the standalone server
(``request.environ`` is the WSGI environ); every other request goes to the application
untouched.

How the connection is taken over
--------------------------------
The handshake is answered *through* the WSGI server: a refusal (400, 403, 426, the
handler's ``reject()``) is an ordinary WSGI response, so keep-alive goes on as usual.
An acceptance calls ``start_response("101 Switching Protocols", ...)`` and flushes it
with ``write(b"")``; gevent.pywsgi sends a 101 without a body or chunking. Then the
WebSocket runs on the server's socket: for upgrade requests pywsgi hands the application
its buffered socket reader as ``wsgi.input``. Bytes the client sent right after its
request are taken from that buffer. When the handler is done, the socket is closed
and so is that reader, which ends pywsgi's keep-alive loop: the server writes nothing
more and reads nothing more.

That works on ``gevent.pywsgi.WSGIServer`` and gunicorn's ``gevent_pywsgi`` worker, and
with :class:`WebSocketHandler` and ``geventws.worker.GeventWebSocketWorker``.
gunicorn's plain ``gevent`` worker parses HTTP itself and gives no way to take the
socket over cleanly: there the middleware answers 500 and logs which worker to use.

gevent-websocket compatibility
------------------------------
:class:`WebSocketHandler` is a pywsgi handler class that runs applications written for
gevent-websocket unchanged: on a WebSocket upgrade it completes the handshake and calls
the application with ``environ["wsgi.websocket"]``, a :class:`WebSocket` with
gevent-websocket's API (``receive()`` returning ``None`` once closed, ``send(message,
binary=None)``, ``close(code, reason)``, ``closed``).
"""

from __future__ import annotations

import io
import logging
import socket as _socket
import time
import weakref
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Optional, Union
from urllib.parse import quote

import gevent
from gevent.pywsgi import WSGIHandler

from ._deadline import Deadline
from ._sockets import format_address
from .connection import Connection, HandshakeAnswer
from .core.frames import CloseCode
from .core.handshake import error_headers
from .core.headers import Headers, HeadersLike, parse_token_list
from .core.http11 import RequestHead
from .core.request import Request
from .core.server_handshake import Accepted, Rejected
from .exceptions import ConnectionClosed, InvalidRequest
from .options import UpgradeOptions, resolve
from .pubsub import Topics
from .upgrade import (
    Handler,
    UpgradePolicy,
    end_connection,
    log_access,
    log_refusal,
    run_handler,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "WebSocketMiddleware",
    "RequestDeadlineHandler",
    "WebSocketHandler",
    "WebSocket",
    "WebSocketError",
    "is_websocket_request",
    "shutdown",
]

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


def is_websocket_request(environ: Mapping[str, Any]) -> bool:
    """Whether ``environ`` is a WebSocket upgrade request (``Upgrade: websocket``)."""
    return "websocket" in parse_token_list([environ.get("HTTP_UPGRADE", "")])


def request_from_environ(environ: dict[str, Any]) -> tuple[RequestHead, Request]:
    """The request head and the :class:`~geventws.Request` of a WSGI ``environ``.

    Header names come back from the CGI form (``HTTP_SEC_WEBSOCKET_KEY`` is
    ``Sec-Websocket-Key``; lookups are case-insensitive). The target is the raw one
    when the server gives it (``RAW_URI``, ``REQUEST_URI``), else rebuilt from
    ``SCRIPT_NAME``, ``PATH_INFO`` and ``QUERY_STRING``."""
    headers = Headers()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.add(key[5:].replace("_", "-").title(), value)
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.add(key.replace("_", "-").title(), value)
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        target = quote(path.encode("latin-1")) or "/"
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    address: Optional[tuple[Any, ...]] = None
    if environ.get("REMOTE_ADDR"):
        port = environ.get("REMOTE_PORT")
        address = (environ["REMOTE_ADDR"], int(port)) if port else (environ["REMOTE_ADDR"],)
    method = environ.get("REQUEST_METHOD", "GET")
    scheme = "wss" if environ.get("wsgi.url_scheme") == "https" else "ws"
    request = Request(method, target, headers, address, environ, scheme=scheme)
    return RequestHead(method, target, headers), request


def _reader_of(environ: Mapping[str, Any]) -> Optional[io.BufferedReader]:
    """The buffered socket reader pywsgi gives upgrade requests as ``wsgi.input``."""
    reader = environ.get("wsgi.input")
    if isinstance(reader, io.BufferedReader) and isinstance(
        getattr(reader, "raw", None), _socket.SocketIO
    ):
        return reader
    return None


def _buffered(reader: io.BufferedReader) -> bytes:
    """Bytes already read past the request (the client's first frames), without
    waiting for more: the socket is non-blocking for the moment of the peek. Raises
    :class:`OSError` when the WSGI server already closed the connection."""
    sock = reader.raw._sock  # type: ignore[attr-defined]
    if sock is None or reader.closed:
        raise ConnectionAbortedError("the WSGI server closed the connection")
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = reader.peek()
    except OSError:
        data = b""
    finally:
        sock.settimeout(timeout)
    if data:
        reader.read(len(data))
    return data


class _WSGIAnswer(HandshakeAnswer):
    """Answers the handshake through the WSGI server's ``start_response``."""

    def __init__(self, start_response: Callable[..., Any], reader: io.BufferedReader) -> None:
        self.start_response = start_response
        self.reader = reader
        self.accepted = False
        self.body: Optional[bytes] = None

    def accept(self, sock: Any, accepted: Accepted, leftover: bytes, deadline: Deadline) -> bytes:
        with deadline.timeout():
            write = self.start_response("101 Switching Protocols", accepted.headers.items())
            write(b"")  # pywsgi sends the status line and headers now, with no body
        self.accepted = True
        return _buffered(self.reader)

    def reject(self, sock: Any, rejected: Rejected, timeout: float) -> None:
        self.start_response(_status_line(rejected.status), rejected.headers.items())
        self.body = rejected.body


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _error(
    start_response: Callable[..., Any],
    status: int,
    message: str,
    headers: Optional[HeadersLike] = None,
) -> list[bytes]:
    body = message.encode("utf-8")
    start_response(_status_line(status), error_headers(body, headers).items())
    return [body]


class _Upgrade:
    """One upgrade request served through WSGI: the connection (registered in the
    middleware's and the process's live sets until :meth:`release`) and its answer."""

    def __init__(
        self, registry: set[Connection], connection: Connection, answer: _WSGIAnswer
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
            return _error(
                start_response,
                426,
                "this endpoint only speaks WebSocket: send an upgrade request\n",
                [("Upgrade", "websocket"), ("Connection", "Upgrade")],
            )
        if self.app is None:
            return _error(start_response, 404, "Not Found\n")
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
        _detach_legacy(environ)
        opened = self._open(environ, start_response)
        if isinstance(opened, list):
            return opened
        try:
            run_handler(handler, opened.connection, logger)
        finally:
            opened.release()
        return opened.body()

    def _open(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        subprotocols: Optional[tuple[str, ...]] = None,
    ) -> Union[list[bytes], _Upgrade]:
        """Validate an upgrade request: the error response's body, or the connection
        ready to accept (its handshake answered through ``start_response``)."""
        started = time.monotonic()
        head, request = request_from_environ(environ)
        reader = _reader_of(environ)
        try:
            if reader is None:
                logger.error("%s", _TAKEOVER_HELP)
                raise InvalidRequest(500, "Internal Server Error")
            if environ.get("SERVER_PROTOCOL", "HTTP/1.1") == "HTTP/1.0":
                raise InvalidRequest(400, "WebSocket needs HTTP/1.1 (RFC 6455 §4.1)")
            sock = reader.raw._sock  # type: ignore[attr-defined]
            answer = _WSGIAnswer(start_response, reader)
            connection = self.policy.open(
                sock, head, request, log=logger, answer=answer, subprotocols=subprotocols
            )
        except InvalidRequest as exc:
            log_refusal(request.remote_address, exc, started, head)
            return _error(start_response, exc.status, exc.message + "\n", exc.headers)
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
    """Close every WebSocket connection opened through this module in this process
    (middleware and :class:`WebSocketHandler` alike), in parallel; for graceful stops
    (the gunicorn worker and ``geventws serve --wsgi`` call it on SIGTERM)."""
    _close(list(_LIVE), code, reason)


# -- gevent-websocket compatibility ---------------------------------------------------


class WebSocketError(OSError):
    """Raised by :class:`WebSocket` for operations on a closed connection. An
    :class:`OSError`, like gevent-websocket's exception of the same name."""


class WebSocket:
    """gevent-websocket's ``environ["wsgi.websocket"]`` API on a geventws connection.

    ``receive()`` returns the next message (``str`` or ``bytes``), or ``None`` once the
    connection is closed, whatever the reason; receiving again after that raises
    :class:`WebSocketError`. ``send(message, binary=None)`` sends bytes as binary and
    str as text unless ``binary`` says otherwise. ``close(code=1000, message=b"")``.
    ``closed``, ``environ``, ``origin``, ``path``, ``protocol`` and ``version`` are as
    in gevent-websocket, and ``connection`` is the underlying
    :class:`~geventws.Connection`.
    """

    def __init__(self, connection: Connection, environ: dict[str, Any]) -> None:
        self.connection = connection
        self.environ = environ
        self._dead = False

    @property
    def closed(self) -> bool:
        return self._dead or self.connection.closed

    @property
    def origin(self) -> Optional[str]:
        return self.environ.get("HTTP_ORIGIN")

    @property
    def protocol(self) -> Optional[str]:
        return self.connection.subprotocol

    @property
    def version(self) -> Optional[str]:
        return self.environ.get("HTTP_SEC_WEBSOCKET_VERSION")

    @property
    def path(self) -> Optional[str]:
        return self.environ.get("PATH_INFO")

    def receive(self) -> Union[str, bytes, None]:
        if self._dead:
            raise WebSocketError("Connection is already closed")
        try:
            return self.connection.receive()
        except ConnectionClosed:
            self._dead = True
            return None

    read_message = receive

    def send(self, message: Union[str, bytes, bytearray], binary: Optional[bool] = None) -> None:
        if binary is None:
            binary = not isinstance(message, str)
        try:
            self.connection.send(message, binary=binary)
        except ConnectionClosed as exc:
            self._dead = True
            raise WebSocketError(f"Socket is dead: {exc}") from None

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, message: Union[str, bytes] = b"") -> None:
        reason = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        self._dead = True
        self.connection.close(code, reason)


def _detach_legacy(environ: dict[str, Any]) -> None:
    """A middleware inside :class:`WebSocketHandler` serves its own routes: the
    handler's not-yet-used ``wsgi.websocket`` is withdrawn."""
    legacy = environ.get("wsgi.websocket")
    if isinstance(legacy, WebSocket) and legacy.connection.handshake_pending:
        legacy._dead = True
        environ["wsgi.websocket"] = None


class _Legacy:
    """Serves gevent-websocket style applications: ``environ["wsgi.websocket"]`` is
    set for every valid upgrade request and the handshake completes when the
    application first uses it (so an application that answers over HTTP instead, or a
    :class:`WebSocketMiddleware` inside it, still can)."""

    def __init__(self, app: WSGIApp, options: UpgradeOptions) -> None:
        self.app = app
        self.settings = WebSocketMiddleware(None, {}, **options)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        chooser = getattr(self.app, "app_protocol", None)  # gevent-websocket's hook
        chosen = chooser(environ.get("PATH_INFO")) if chooser is not None else None
        opened = self.settings._open(environ, start_response, (chosen,) if chosen else ())
        if isinstance(opened, list):
            return opened
        answer = opened.answer

        def start_http_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if answer.accepted:
                return _ignore  # the HTTP response of an upgraded request means nothing
            return start_response(status, headers, exc_info)  # type: ignore[no-any-return]

        environ["wsgi.websocket_version"] = "13"
        environ["wsgi.websocket"] = WebSocket(opened.connection, environ)
        try:
            result = self.app(environ, start_http_response)
            try:
                body = list(result or ())
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if answer.accepted:
                opened.connection.close()
                return []
            return body  # the application answered over HTTP (or a middleware did)
        except Exception:
            if not answer.accepted:
                raise  # pywsgi answers 500
            logger.error("application failed: %s", environ.get("PATH_INFO"), exc_info=True)
            opened.connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return []
        finally:
            environ["wsgi.websocket"] = None
            opened.release()


def _ignore(data: bytes) -> None:
    """The ``write`` callable of an upgraded request's HTTP response: a no-op."""


class RequestDeadlineHandler(WSGIHandler):  # type: ignore[misc]
    """A gevent.pywsgi handler class that reads every request head under a deadline.

    gevent.pywsgi waits for a request line and headers as long as the client takes, so
    a client sending a header byte now and then (slowloris) holds a connection, and a
    greenlet, forever. With this handler the request line and headers of each request
    must arrive within :attr:`handshake_timeout` seconds, counted from the moment the
    server starts waiting for them: when the connection is accepted, and after each
    response on a keep-alive connection (so an idle keep-alive connection is closed
    after it too). Past the deadline the connection is closed without an answer.
    Without TLS handshake done at accept (``do_handshake_on_connect=False``, as
    ``geventws serve --wsgi`` sets), the TLS handshake is part of the first read and
    under the deadline as well. The body and the application's time are not limited.

    ``WSGIServer(address, app, handler_class=RequestDeadlineHandler)``; subclass and
    set :attr:`handshake_timeout` to change it. :class:`WebSocketHandler` (and so
    ``geventws.worker.GeventWebSocketWorker``) inherits it.

    Logs, on ``geventws.wsgi``: INFO ``request head timed out: ADDRESS`` when a
    request was begun or none came on a new connection, DEBUG for an idle keep-alive
    connection closed.
    """

    #: Seconds for each request line and headers (the ``handshake_timeout`` option).
    handshake_timeout: ClassVar[float] = 10.0
    _requests = 0  # requests read on this connection
    _head_deadline: Optional[gevent.Timeout] = None

    def handle_one_request(self) -> Any:
        timer = gevent.Timeout(self.handshake_timeout)
        self._head_deadline = timer
        timer.start()
        idle = True
        try:
            if self._requests:
                # Wait for the first byte apart, to tell an idle keep-alive connection
                # from a slow request.
                self.rfile.peek(1)
            idle = False
            return super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            address = format_address(self.client_address)
            if idle:
                logger.debug("idle keep-alive connection closed: %s", address)
            else:
                logger.info("request head timed out: %s", address)
            return None  # pywsgi's loop ends and closes the connection
        except OSError:  # from the peek: reset by the client
            return None
        finally:
            self._head_deadline = None
            timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            # The head is read (or refused): the application's time is its own.
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            self._requests += 1


class WebSocketHandler(RequestDeadlineHandler):
    """A gevent.pywsgi handler class that serves gevent-websocket applications.

    ``WSGIServer(address, app, handler_class=WebSocketHandler)``: on a valid WebSocket
    upgrade request the application is called with ``environ["wsgi.websocket"]`` (a
    :class:`WebSocket`); the handshake completes when the application first uses it.
    An invalid upgrade request gets its 400 (or 426) here, as with gevent-websocket;
    other requests reach the application as usual. :class:`WebSocketMiddleware` routes
    inside the application keep working. Subclass and set ``websocket_options`` (the
    :class:`WebSocketMiddleware` options) to change limits and timeouts. Request heads
    are read under :attr:`~RequestDeadlineHandler.handshake_timeout` (see
    :class:`RequestDeadlineHandler`).
    """

    websocket_options: ClassVar[UpgradeOptions] = {}
    application: Any  # set by pywsgi for each request

    def run_application(self) -> None:
        if not is_websocket_request(self.environ):
            super().run_application()
            return
        app = self.application
        self.application = _Legacy(app, self.websocket_options)
        try:
            super().run_application()
        finally:
            self.application = app
