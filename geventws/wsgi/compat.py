"""gevent-websocket compatibility: :class:`WebSocketHandler` runs applications written
for gevent-websocket unchanged, with ``environ["wsgi.websocket"]`` a :class:`WebSocket`
(see :mod:`geventws.wsgi`)."""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Iterable, Optional, Union

from ..connection import Connection
from ..core.frames import CloseCode
from ..exceptions import ConnectionClosed
from ..options import UpgradeOptions
from .deadline import RequestDeadlineHandler
from .environ import LEGACY_DETACH, is_websocket_request
from .middleware import WebSocketMiddleware, WSGIApp

__all__ = ["WebSocket", "WebSocketError", "WebSocketHandler"]

logger = logging.getLogger("geventws.wsgi")


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
        opened = self.settings.open(environ, start_response, (chosen,) if chosen else ())
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
        websocket = environ["wsgi.websocket"] = WebSocket(opened.connection, environ)

        def detach() -> None:
            # A WebSocketMiddleware inside the application serves its own routes: the
            # not-yet-used wsgi.websocket is withdrawn.
            if websocket.connection.handshake_pending:
                websocket._dead = True
                environ["wsgi.websocket"] = None

        environ[LEGACY_DETACH] = detach
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
            environ.pop(LEGACY_DETACH, None)
            opened.release()


def _ignore(data: bytes) -> None:
    """The ``write`` callable of an upgraded request's HTTP response: a no-op."""


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
