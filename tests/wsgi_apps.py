"""WSGI applications for the WSGI, gunicorn and gevent-websocket tests.

``app``: plain WSGI routes plus WebSocket routes through WebSocketMiddleware.
``legacy_app``: an application written for gevent-websocket, unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import geventws
from geventws.worker import GeventWebSocketWorker
from geventws.wsgi import WebSocketMiddleware


def http_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        body = b"hello from WSGI"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "15")])
        return [body]
    if path == "/echo-body":
        data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return [data]
    start_response("404 Not Found", [("Content-Length", "9")])
    return [b"not found"]


def echo(connection: geventws.Connection, request: geventws.Request) -> None:
    for message in connection:
        connection.send(message, binary=isinstance(message, bytes))


def info(connection: geventws.Connection, request: geventws.Request) -> None:
    """Tells what the handler saw, then echoes."""
    if request.args.get("reject"):
        return connection.reject(403, "go away")
    if request.args.get("fail") == "before":
        raise RuntimeError("failing before the handshake")
    connection.accept()
    assert request.environ is not None
    connection.send(
        json.dumps(
            {
                "path": request.path,
                "args": dict(request.args),
                "cookie": request.cookies.get("session"),
                "server": request.environ.get("SERVER_SOFTWARE", ""),
                "extensions": connection.extensions,
            }
        )
    )
    if request.args.get("fail") == "after":
        raise RuntimeError("failing after the handshake")
    echo(connection, request)


app = WebSocketMiddleware(http_app, {"/ws": echo, "/info": info}, ping_interval=None)


def legacy_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The usual shape of a gevent-websocket application (a chat echo with a goodbye)."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"plain"]
    while True:
        message = ws.receive()
        if message is None:
            break
        if message == "bye":
            ws.close(4000, b"see you")
            break
        ws.send(message)
    return []


def _site(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO", "").startswith("/legacy"):
        return legacy_app(environ, start_response)
    return http_app(environ, start_response)


#: Middleware routes, plain WSGI routes and a gevent-websocket application together.
combined = WebSocketMiddleware(_site, {"/ws": echo, "/info": info}, ping_interval=None)


class PatientWorker(GeventWebSocketWorker):
    """The gunicorn worker with a request-head deadline far above any test's wait: a
    graceful stop that waited for idle keep-alive connections to time out would show."""

    handshake_timeout = 120.0
