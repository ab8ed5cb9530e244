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

from .compat import WebSocket, WebSocketError, WebSocketHandler
from .deadline import RequestDeadlineHandler
from .environ import is_websocket_request, request_from_environ
from .middleware import WebSocketMiddleware, shutdown

__all__ = [
    "WebSocketMiddleware",
    "RequestDeadlineHandler",
    "WebSocketHandler",
    "WebSocket",
    "WebSocketError",
    "is_websocket_request",
    "request_from_environ",
    "shutdown",
]
