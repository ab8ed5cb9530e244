"""The open link of a connection: protocol, reader, writer, keepalive, and how it ends.

A :class:`Transport` exists from the moment the opening handshake completed. It wires
the sans-I/O :class:`~geventws.core.protocol.Protocol` to the socket through the
:class:`~geventws._reader.Reader` and the :class:`~geventws._writer.Writer`, runs the
:class:`~geventws._keepalive.Keepalive`, and ends the link.

Ending
------
When the protocol says the transport should close (closing handshake done, protocol
error, end of file, a local failure), :meth:`Transport.finish` marks the link over at
once (receivers wake up, pings waiting for pongs fail) and has it *closed*: by the
handler itself when it ends right away (no greenlet spawned, the common case), else by a
closer greenlet. The closing writes what is left (the close frame). If this side ends
TCP first (RFC 6455 §7.1.1: the protocol decides) and the peer's close frame is in, with
no ping of ours unanswered and no input left unread (one non-blocking ``recv`` on a
plain socket), it closes the socket at once: the peer sends nothing more but its FIN,
and closing with nothing unread makes no reset. Otherwise it shuts TCP down first if
this side should, waits up to ``close_timeout`` for the peer to close its side, reading
and discarding (only when no other greenlet reads: no two greenlets ever wait on one
socket), and closes the socket in a ``finally``. Ending the link from a greenlet
that isn't reading (:meth:`Transport.end`: ``close()`` timing out, keepalive,
``send_timeout``, a failed write) shuts the socket down both ways first, so a greenlet
blocked in ``recv`` or ``send`` wakes up at once. Nothing here raises out of a
shutdown path.
"""

from __future__ import annotations

import logging
import socket as _socket
from typing import Any, Callable, Optional

import gevent
from gevent import getcurrent
from gevent.event import Event

from ._deadline import Deadline
from ._keepalive import Keepalive
from ._reader import Reader
from ._sockets import format_address, raw_socket, recv_now
from ._writer import HIGH_WATER, SendTimeout, Writer
from .core.events import CLOSED
from .core.frames import CloseCode
from .core.protocol import Protocol
from .exceptions import ConnectionClosed, ProtocolError
from .options import ConnectionSettings

__all__ = ["Transport"]

#: The closing is due and nobody does it yet (see :meth:`Transport.finish`).
_PENDING: Any = object()


class _Inline(Event):  # type: ignore[misc]
    """The closing runs in a greenlet that waited for it; set when done."""


class Transport:
    """The open link over ``sock`` and ``protocol``; ``leftover`` are bytes read past
    the handshake, ``address`` the peer's (for logs), ``on_end()`` runs once when the
    link is over (it must not block)."""

    __slots__ = (
        "_address",
        "_closer",
        "_logger",
        "_on_end",
        "_pong_due",
        "_settings",
        "_sock",
        "keepalive",
        "protocol",
        "reader",
        "writer",
    )

    def __init__(
        self,
        sock: Any,
        protocol: Protocol,
        settings: ConnectionSettings,
        *,
        leftover: bytes,
        address: Optional[tuple[Any, ...]],
        logger: logging.Logger,
        on_end: Optional[Callable[[], None]] = None,
    ) -> None:
        self._sock = sock
        self._on_end = on_end
        self._settings = settings
        self._address = address
        self._logger = logger
        self._closer: Any = None  # _PENDING, an _Inline, or the closer greenlet
        self._pong_due = False  # a ping of ours was unanswered at the end (see _close)
        self.protocol = protocol
        raw = raw_socket(sock)
        self.writer = Writer(sock, settings.send_timeout, self, raw)
        self.keepalive = Keepalive(
            protocol,
            self.writer,
            self,
            interval=settings.ping_interval,
            timeout=settings.ping_timeout,
        )
        self.reader = Reader(
            sock,
            protocol,
            self.writer,
            owner=self,
            high=settings.max_queue,
            low=settings.max_queue_low,
            logger=logger,
            raw=raw,
        )
        self.keepalive.start()
        self.reader.start(leftover)

    @property
    def ending(self) -> bool:
        """Whether the link is over (:meth:`finish` ran)."""
        return self._closer is not None

    def queued(self, protocol: Protocol) -> None:
        """Move what ``protocol`` produced to the writer: written at once past the
        high-water mark (blocking: back-pressure on the caller), else when the calling
        greenlet yields."""
        writer = self.writer
        writer.queue(protocol.data_to_send())
        if writer.buffered >= HIGH_WATER:
            writer.write()
        else:
            writer.write_soon()

    # -- ending -------------------------------------------------------------------------

    def end(self) -> None:
        """End the link now, from any greenlet: shut the socket down both ways (a
        greenlet blocked in ``recv`` or ``send`` wakes up) and finish. Never blocks."""
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        if self.protocol.state is not CLOSED:
            self.protocol.receive_eof()
        self.finish()

    def fail(self, code: int, reason: str) -> None:
        """Give up on the link from our side: record ``code`` (then reported by the
        connection's ``close_code`` and exceptions), try to get the close frame out
        without waiting, and end the link. Never blocks."""
        if self._closer is not None:
            return
        protocol = self.protocol
        protocol.fail(ProtocolError(reason, code))
        self.writer.queue(protocol.data_to_send())
        self.writer.write_nowait()
        self.end()

    def keepalive_expired(self) -> None:
        # ``finish`` logs it: "closing ADDRESS: keepalive ping timeout (1011)".
        self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    def write_failed(self, exc: Exception) -> ConnectionClosed:
        """The writer's transport failed (``exc``): end the link; return what writers
        raise. Never blocks (it may run in a loop callback)."""
        protocol = self.protocol
        if isinstance(exc, SendTimeout) and protocol.state is not CLOSED:
            protocol.fail(ProtocolError("send timed out", CloseCode.POLICY_VIOLATION))
            protocol.data_to_send()  # the peer doesn't read: no close frame
        self.end()
        return protocol.closed_exception()

    def finish(self) -> None:
        """The link is over: wake everyone, and have the socket closed: by the next
        greenlet that waits for it (usually the handler, ending at once: no greenlet is
        spawned for it), else by a closer greenlet started as the loop comes round."""
        if self._closer is not None:
            return
        protocol = self.protocol
        self._closer = _PENDING
        gevent.get_hub().loop.run_callback(self._spawn_closer)
        if protocol.error is not None:
            self._logger.info(
                "closing %s: %s (%d)",
                format_address(self._address),
                protocol.error,
                protocol.error.code,
            )
        self.reader.stop()
        self._pong_due = self.keepalive.unanswered
        self.keepalive.stop()
        on_end, self._on_end = self._on_end, None  # once (and the connection let go)
        if on_end is not None:
            on_end()

    def _spawn_closer(self) -> None:
        # A loop callback: nobody took the closing over; a greenlet of its own does it.
        if self._closer is _PENDING:
            self._closer = gevent.spawn(self._close, Deadline(self._settings.close_timeout))

    def _close(self, deadline: Deadline) -> None:
        """The closing: what is left to write; then the socket closed at once after a
        closing handshake with nothing unread, else after the half-close and the peer's
        end (see the module); closed whatever happens."""
        protocol = self.protocol
        try:
            try:
                self.writer.write(deadline)
            except (ConnectionClosed, TimeoutError):
                pass
            self.writer.fail(protocol.closed_exception())
            if protocol.shutdown_first:
                handshake_over = protocol.close_rcvd is not None and not self._pong_due
                if handshake_over and self._nothing_unread():
                    return  # the closing handshake is over: close now (the finally)
                try:
                    self._sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass
            if not protocol.eof_rcvd:
                self.reader.drain(deadline)
        finally:
            self._sock.close()
            if self.writer.failed:  # (else a write may yet fail and tell this transport)
                self._let_go()

    def _nothing_unread(self) -> bool:
        """Whether the socket may be closed at once without a reset: a plain socket that
        no other greenlet reads, with no input left unread in the kernel (one
        non-blocking ``recv`` that only peeks). The peer's close frame was received and
        no ping of ours awaits a pong (which the peer may still send, RFC 6455
        §5.5.2), so it sends nothing more but its FIN, which the kernel handles after
        the close (RFC 6455 §7.1.1: the server closes first)."""
        raw = self.writer.raw
        if raw is None or self.reader.reading:
            return False
        try:
            unread = recv_now(raw, 1, _socket.MSG_PEEK)
        except OSError:
            return False  # let the usual path deal with it
        return not unread  # None: nothing there; b"": only the peer's FIN

    def wait_closed(self, deadline: Deadline) -> None:
        """Wait (within ``deadline``, then a moment more to kill a closer greenlet) until
        the socket is closed; does the closing itself if nobody started it yet."""
        closer = self._closer
        if closer is _PENDING:
            done = self._closer = _Inline()
            try:
                self._close(deadline)
            finally:
                done.set()
        elif isinstance(closer, _Inline):
            closer.wait(deadline.remaining())
        elif closer is not None and getcurrent() is not closer:
            closer.join(timeout=deadline.remaining())
            if not closer.dead:
                closer.kill(block=True, timeout=1)

    def release(self) -> None:
        """Make sure the link is over, no greenlet of it is left and the socket is
        closed (bounded by ``close_timeout``); then let its parts go of it. Never
        raises."""
        if self._closer is None:
            self.end()
        self.wait_closed(Deadline(self._settings.close_timeout))
        writer = self.writer
        if not writer.failed:  # (a closer killed before it got there)
            writer.fail(self.protocol.closed_exception())
        writer.stop()
        self._let_go()

    def _let_go(self) -> None:
        """The link is over, its socket closed and its writer failed: its parts drop
        their references back to it, so a finished connection, a client's included, is
        freed by reference counting, not left as a cycle for the garbage collector
        (which cost about 10 µs a connection under load). A client's closing cut short
        (a timeout, a kill) before the writer failed skips this: the collector frees
        that one."""
        self.writer._owner = self.reader._owner = self.keepalive._owner = None
