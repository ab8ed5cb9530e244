"""The upgrade policy shared by the standalone server and the WSGI middleware, and
what every server does around a handler.

:class:`UpgradePolicy` holds what a server decides about upgrade requests (allowed
origins, subprotocols, compression) and the settings of the connections it makes;
:meth:`UpgradePolicy.open` turns a parsed request into a :class:`~geventws.Connection`
whose handshake the handler then accepts or rejects (the decision itself is the sans-I/O
:class:`~geventws.core.server_handshake.ServerHandshake`'s). :func:`run_handler` and
:func:`end_connection` are the handler's life cycle, the same on every server.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Optional

from ._sockets import format_address
from .connection import Connection, HandshakeAnswer
from .core.frames import CloseCode
from .core.http11 import RequestHead
from .core.protocol import Side
from .core.request import Request
from .core.server_handshake import ServerHandshake
from .exceptions import ConnectionClosed, InvalidRequest
from .options import ConnectionSettings
from .pubsub import Topics

__all__ = [
    "Handler",
    "UpgradePolicy",
    "end_connection",
    "access_logger",
    "log_access",
    "log_refusal",
    "run_handler",
]

Handler = Callable[[Connection, Request], Any]


class UpgradePolicy:
    """What a server decides about every upgrade request, and how it makes its
    connections. ``values`` are the resolved options (:func:`geventws.options.resolve`)
    of a server or middleware: ``origins``, ``subprotocols``, ``broker`` and the
    connection options. :attr:`topics` is the server's topic registry, whose broker
    starts on first use (so after a ``fork``, in the process that serves)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        origins = values["origins"]
        #: The allowed origins, or ``None`` for all.
        self.origins: Optional[frozenset[Optional[str]]] = (
            None if origins is None else frozenset(origins)
        )
        #: The supported subprotocols, in order of preference.
        self.subprotocols: tuple[str, ...] = tuple(values["subprotocols"] or ())
        #: The settings every connection shares.
        self.settings = ConnectionSettings(values)
        broker = values["broker"]
        if broker is None:
            broker = os.environ.get("GEVENTWS_BROKER") or None
        #: The topics of this server's connections (:class:`~geventws.pubsub.Topics`).
        self.topics = Topics(broker)

    def open(
        self,
        sock: Any,
        head: RequestHead,
        request: Request,
        *,
        log: logging.Logger,
        leftover: bytes = b"",
        answer: Optional[HandshakeAnswer] = None,
        subprotocols: Optional[tuple[str, ...]] = None,
    ) -> Connection:
        """Check an upgrade request and make its connection, ready to accept.

        Raises :class:`InvalidRequest` with the status to answer (see
        :class:`~geventws.core.server_handshake.ServerHandshake`). ``log`` is the
        connection's logger; ``leftover`` the bytes read past the request; ``answer``
        replaces writing the handshake's answer to ``sock``; ``subprotocols`` replaces
        the policy's own."""
        handshake = ServerHandshake(
            head,
            origins=self.origins,
            subprotocols=self.subprotocols if subprotocols is None else subprotocols,
            deflate=self.settings.deflate,
        )
        return Connection(
            sock,
            Side.SERVER,
            self.settings,
            handshake=handshake,
            request=request,
            remote_address=request.remote_address,
            leftover=leftover,
            answer=answer,
            logger=log,
            topics=self.topics,
        )


#: One INFO line per connection, when it ends: ``--no-access-log`` turns it off.
access_logger = logging.getLogger("geventws.access")


def log_access(
    address: Any,
    method: str,
    target: str,
    status: Optional[int],
    *,
    started: float,
    code: Optional[int] = None,
    reason: str = "",
) -> None:
    """The access line of one connection: ``ADDRESS METHOD PATH STATUS [close=CODE]
    duration=SECONDS [(REASON)]``. The query string is left out: tokens passed there
    must not end up in logs (the DEBUG line ``connection opened`` has the whole target).
    Formatted only when INFO is enabled on ``geventws.access``."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    access_logger.info(
        "%s %s %s %s%s duration=%.3fs%s",
        format_address(address),
        method,
        target.partition("?")[0],
        "-" if status is None else status,
        "" if code is None else f" close={code}",
        time.monotonic() - started,
        f" ({reason})" if reason else "",
    )


def log_refusal(address: Any, exc: InvalidRequest, started: float, head: Any = None) -> None:
    """The access line of an upgrade request refused before the handler ran (``head``
    is the parsed request head, if it parsed)."""
    method, target = (head.method, head.target) if head is not None else ("-", "-")
    log_access(address, method, target, exc.status, started=started, reason=exc.message)


def run_handler(handler: Handler, connection: Connection, logger: logging.Logger) -> None:
    """Run ``handler(connection, request)`` the way every server does: a closed
    connection ends it quietly; an exception is logged at ERROR and answered with 500
    before the handshake, 1011 after; a handler that returns gets its connection closed
    (1000). ``GreenletExit`` and other ``BaseException`` pass through."""
    request = connection.request
    assert request is not None  # server side
    try:
        handler(connection, request)
    except ConnectionClosed as exc:
        logger.debug("handler ended by a closed connection: %s", exc)
    except Exception:
        logger.error(
            "handler failed: %s %s",
            format_address(connection.remote_address),
            request.target.partition("?")[0],  # tokens in query strings stay out of logs
            exc_info=True,
        )
        if connection.handshake_pending:
            connection.reject(500, "Internal Server Error\n")
        else:
            connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        return
    connection.close()


def end_connection(connection: Connection, started: float) -> None:
    """Release ``connection`` after its handler (never raises): out of its topics,
    socket closed, no greenlet left; then its access line."""
    connection.abort()
    request = connection.request
    assert request is not None  # server side
    log_access(
        connection.remote_address,
        request.method,
        request.target,
        connection.status,
        started=started,
        code=connection.close_code,
    )
