"""WSGI environ and socket takeover: what a request is, and how its handshake is answered
through the WSGI server (see :mod:`geventws.wsgi`)."""

from __future__ import annotations

import io
import socket as _socket
from http import HTTPStatus
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote

from .._deadline import Deadline
from ..connection import HandshakeAnswer
from ..core.handshake import error_headers
from ..core.headers import Headers, HeadersLike, parse_token_list
from ..core.http11 import RequestHead
from ..core.request import Request
from ..core.server_handshake import Accepted, Rejected

__all__ = [
    "LEGACY_DETACH",
    "WSGIAnswer",
    "buffered",
    "error_response",
    "is_websocket_request",
    "reader_of",
    "request_from_environ",
    "status_line",
]

#: The environ key under which the gevent-websocket compatibility handler leaves a
#: callable that withdraws its not-yet-used ``wsgi.websocket`` (a middleware inside it
#: serves its own routes).
LEGACY_DETACH = "geventws.detach_legacy"


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


def reader_of(environ: Mapping[str, Any]) -> Optional[io.BufferedReader]:
    """The buffered socket reader pywsgi gives upgrade requests as ``wsgi.input``."""
    reader = environ.get("wsgi.input")
    if isinstance(reader, io.BufferedReader) and isinstance(
        getattr(reader, "raw", None), _socket.SocketIO
    ):
        return reader
    return None


def buffered(reader: io.BufferedReader) -> bytes:
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


class WSGIAnswer(HandshakeAnswer):
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
        return buffered(self.reader)

    def reject(self, sock: Any, rejected: Rejected, timeout: float) -> None:
        self.start_response(status_line(rejected.status), rejected.headers.items())
        self.body = rejected.body


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def error_response(
    start_response: Callable[..., Any],
    status: int,
    message: str,
    headers: Optional[HeadersLike] = None,
) -> list[bytes]:
    body = message.encode("utf-8")
    start_response(status_line(status), error_headers(body, headers).items())
    return [body]
