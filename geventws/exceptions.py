"""Exceptions raised by geventws.

Every exception the library raises on purpose derives from :class:`WebSocketError`::

    WebSocketError
    ├── ConnectionClosed                (code, reason)
    │   ├── ConnectionClosedOK          closed with 1000, 1001 or without a code
    │   └── ConnectionClosedError       any other code, 1006 when the TCP link dropped
    ├── InvalidHandshake                the opening handshake failed
    │   ├── InvalidRequest              a bad upgrade request; carries the HTTP status to answer
    │   └── InvalidResponse             a bad answer to our (client) upgrade request
    ├── ProtocolError                   the peer broke RFC 6455 (carries the close code)
    │   └── PayloadTooBig               a message or frame went over the limit (1009)
    ├── InvalidState                    an operation at the wrong time (send after close...)
    └── InvalidURI                      not a ws:// or wss:// URI

Receiving with a deadline raises the builtin :class:`TimeoutError`; the connection stays
usable afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .core.headers import Headers

__all__ = [
    "WebSocketError",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidRequest",
    "InvalidResponse",
    "ProtocolError",
    "PayloadTooBig",
    "InvalidState",
    "InvalidURI",
]


class WebSocketError(Exception):
    """Root of every exception geventws raises on purpose."""


class ConnectionClosed(WebSocketError):
    """The connection is closed; ``code`` and ``reason`` are the ones the peer sent.

    ``code`` is 1006 when the TCP connection was lost without a closing handshake and
    1005 when the peer's close frame carried no code.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        if self.reason:
            return f"connection closed: {self.code} ({self.reason})"
        return f"connection closed: {self.code}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000, 1001, or a close frame without code)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed abnormally: protocol error, handler failure, lost link..."""


class InvalidHandshake(WebSocketError):
    """The opening handshake failed."""


class InvalidRequest(InvalidHandshake):
    """A client's upgrade request was refused.

    ``status`` is the HTTP status the server answers with (400, 403, 405, 414, 426, 431,
    505), ``headers`` extra response headers (such as ``Sec-WebSocket-Version: 13`` on a
    426).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: Optional[list[tuple[str, str]]] = None,
    ) -> None:
        self.status = status
        self.message = message
        self.headers = headers or []
        super().__init__(f"{status}: {message}")


class InvalidResponse(InvalidHandshake):
    """The server's answer to a client's upgrade request was not an acceptable 101.

    For an HTTP answer other than 101, ``status`` is its status, ``headers`` its
    :class:`~geventws.Headers` and ``body`` up to 64 KiB of its body; for
    other failures (a wrong accept key, a malformed head) ``status`` and ``headers``
    are ``None``.
    """

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        headers: Optional[Headers] = None,
        body: bytes = b"",
    ) -> None:
        self.message = message
        self.status = status
        self.headers = headers
        self.body = body
        super().__init__(message if status is None else f"{status}: {message}")


class ProtocolError(WebSocketError):
    """The peer violated the protocol; ``code`` is the close code sent to it (RFC 6455 §7.4)."""

    def __init__(self, message: str, code: int = 1002) -> None:
        self.code = code
        super().__init__(message)


class PayloadTooBig(ProtocolError):
    """A message or frame exceeded ``max_size`` (close code 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1009)


class InvalidState(WebSocketError):
    """An operation was attempted in a state that does not allow it."""


class InvalidURI(WebSocketError):
    """A URI that is not a valid ``ws://`` or ``wss://`` URI."""
