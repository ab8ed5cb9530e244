"""geventws: WebSocket (RFC 6455) servers and clients on gevent, with a blocking API.

Importing geventws never monkey-patches; ``geventws serve`` does, before importing the
application.
"""

from __future__ import annotations

from .broadcast import broadcast
from .client import connect
from .connection import Connection
from .core import frames as _frames
from .core.frames import CloseCode
from .core.headers import Headers
from .core.request import Request
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidRequest,
    InvalidResponse,
    InvalidState,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)
from .server import WebSocketServer, serve

__version__ = "0.1.0"


def speedups_available() -> bool:
    """Whether the compiled ``geventws._speedups`` module is loaded: unmasking frames
    and :func:`broadcast`'s batched sends run in C. ``False`` when the package was
    built without a C compiler: the same behaviour in pure Python, slower on large
    messages and broadcasts (``geventws serve --log-level debug`` says which at
    startup)."""
    return _frames.SPEEDUPS


__all__ = [
    "CloseCode",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Headers",
    "InvalidHandshake",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidState",
    "InvalidURI",
    "PayloadTooBig",
    "ProtocolError",
    "Request",
    "WebSocketError",
    "WebSocketServer",
    "broadcast",
    "connect",
    "serve",
    "speedups_available",
    "__version__",
]
