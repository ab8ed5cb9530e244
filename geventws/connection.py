"""The blocking WebSocket connection handed to handlers and returned by the client.

Theory of operation
-------------------
Reading. Whoever needs bytes reads the socket itself: a handler blocked in
:meth:`Connection.receive` with nothing queued calls ``recv`` *inline*, feeds
:class:`~geventws.core.protocol.Protocol` and returns the first message, with no other
greenlet involved. While nobody reads (the handler is busy elsewhere, or only pushes),
an I/O watcher is armed on the socket; when bytes arrive, its callback spawns a
short-lived *helper* greenlet that reads once, answers pings and sees a close, queues
the messages, and exits. So an idle connection costs one greenlet (its handler), the echo
path costs no extra switch, and a handler that never receives still answers pings and
notices a close. ``_reading`` says whether some greenlet currently owns the read side;
only that one calls ``recv``.

Back-pressure. Complete messages wait in a deque that :meth:`~Connection.receive` pops.
Once ``max_queue`` messages wait, the watcher is not re-armed: nobody reads, the kernel
buffers fill up and TCP pushes back on the client. Reading resumes when the handler has
taken the queue down to a quarter.

Writing. :meth:`Connection.send` frames the message into the protocol's output queue,
which is written in one go when the calling greenlet next blocks (in
:meth:`~Connection.receive`, or anywhere else through a hub callback), or at once past
64 KiB, so ``send()`` still blocks while the socket can't take more. A write lock keeps
frames whole when several greenlets send at once.

Closing. When the protocol says the transport should close (closing handshake done,
protocol error, end of file), the connection is marked done at once (receivers wake up)
and a closer greenlet closes the socket: the server shuts its sending side down first
(RFC 6455 §7.1.1), then it waits at most ``close_timeout`` for the peer to close its side.
Closing from a greenlet that isn't the one reading (``close()`` timing out, keepalive,
``send_timeout``) shuts the socket down both ways, so that the reading greenlet gets end
of file and finishes the connection itself.
"""

from __future__ import annotations

import codecs
import logging
import os
import socket as _socket
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import gevent
from gevent import getcurrent
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from .core.deflate import Deflate
from .core.frames import CloseCode
from .core.handshake import accept_headers, reject_response, select_subprotocol
from .core.headers import Headers, HeadersLike
from .core.http11 import find_head_end, serialize_response
from .core.protocol import Pong, Protocol, Side, State, prepare_frame
from .core.request import Request
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidRequest,
    InvalidState,
    ProtocolError,
)

__all__ = ["Connection", "Data", "broadcast"]

Data = Union[str, bytes]

_RECV_SIZE = 262144
_WRITE_HIGH_WATER = 65536
_JOIN_LIMIT = 262144
_OK_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})

_PENDING, _ACCEPTED, _REJECTED = "pending", "accepted", "rejected"


class _ReadTimeout(Exception):
    """Internal: ``receive(timeout)`` ran out while reading inline."""


class _SendTimeout(Exception):
    """Internal: a write took longer than ``send_timeout``."""


_END = object()  # the end of an iterable of fragments
_NOT_UTF8 = "bytes sent as text must be valid UTF-8; pass binary=True to send binary frames"


def close_socket(sock: Any, timeout: float, shutdown_first: bool = True) -> None:
    """Close ``sock`` without losing what was written to it.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    a close frame or an HTTP error still in flight. So: shut the sending side down (the
    server closes first, RFC 6455 §7.1.1), read until the peer closes its side or
    ``timeout`` passes, then close. Never raises.
    """
    try:
        if shutdown_first:
            sock.shutdown(_socket.SHUT_WR)
        with gevent.Timeout(timeout, False):
            while sock.recv(65536):
                pass
    except OSError:
        pass
    finally:
        sock.close()


def refuse(
    sock: Any,
    status: int,
    body: Union[str, bytes],
    headers: Optional[HeadersLike],
    timeout: float,
) -> None:
    """Answer an HTTP error (``reject_response``) and close ``sock`` gracefully, all
    within about ``timeout`` seconds each. Never raises."""
    try:
        with gevent.Timeout(timeout, False):
            sock.sendall(reject_response(status, body, headers))
    except OSError:
        pass
    close_socket(sock, timeout)


def read_head(sock: Any, chunk: int = 16384) -> Optional[tuple[bytes, bytes]]:
    """Read an HTTP head from ``sock``: ``(head, bytes read past it)``, or ``None`` if
    the peer closed first. Raises :class:`~geventws.InvalidRequest` (400/431) as soon as
    the head proves too large; the caller sets the deadline."""
    buffer = bytearray()
    while True:
        data = sock.recv(chunk)
        if not data:
            return None
        buffer += data
        end = find_head_end(buffer)
        if end >= 0:
            return bytes(buffer[:end]), bytes(buffer[end:])


class HandshakeAnswer:
    """How a server connection answers its opening handshake. The default (``None``
    in :meth:`Connection._prepare`) writes to the socket; the WSGI glue answers through
    the WSGI server instead (see :mod:`geventws.wsgi`)."""

    def accept(self, headers: Headers) -> bytes:
        """Send 101 with ``headers``; return bytes already read past the request."""
        raise NotImplementedError

    def reject(self, status: int, body: bytes, headers: Optional[HeadersLike]) -> None:
        """Answer an HTTP error ``status`` with ``body``."""
        raise NotImplementedError


class Connection:
    """A WebSocket connection with a blocking, greenlet-friendly API.

    Server side, the handler receives it before the handshake is answered:
    :meth:`accept` and :meth:`reject` decide, and any other operation accepts
    implicitly. Client side, :func:`geventws.connect` returns it open.

    Every method may be called from any greenlet; sends from several greenlets never
    interleave. Receiving from several greenlets at once is allowed (each message goes
    to one of them) but rarely what you want.
    """

    # Slots keep the many idle connections of a server small; ``__dict__`` still lets
    # applications attach their own attributes (``connection.user = ...``).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_answer",
        "_broadcast_raw",
        "_closer",
        "_deflate",
        "_done",
        "_flush_cb",
        "_fragmenting",
        "_handshake",
        "_ka_deadline",
        "_ka_timer",
        "_ka_waiting",
        "_key",
        "_leftover",
        "_loop",
        "_messages",
        "_paused",
        "_pings",
        "_protocol",
        "_reading",
        "_send_nowait",
        "_sock",
        "_ssl_pending",
        "_supported_subprotocols",
        "_unflushed",
        "_wakeup",
        "_watcher",
        "_write_lock",
        "close_timeout",
        "extensions",
        "logger",
        "max_queue",
        "max_queue_low",
        "max_size",
        "ping_interval",
        "ping_timeout",
        "remote_address",
        "request",
        "response_headers",
        "send_timeout",
        "side",
        "subprotocol",
    )

    def __init__(
        self,
        sock: Any,
        side: Side,
        *,
        request: Optional[Request] = None,
        remote_address: Optional[tuple[Any, ...]] = None,
        max_size: Optional[int] = 2**20,
        max_queue: Union[int, tuple[int, int]] = 16,
        close_timeout: float = 10.0,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        send_timeout: Optional[float] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self._sock = sock
        self.side = side
        #: The upgrade request (server side) or ``None`` (client side).
        self.request = request
        #: The peer's address as the socket reports it.
        self.remote_address = remote_address
        #: The negotiated subprotocol, or ``None``; set when the handshake is accepted.
        self.subprotocol: Optional[str] = None
        #: The response headers of the handshake (client side).
        self.response_headers: Optional[Any] = None
        self.max_size = max_size
        high, low = (max_queue, None) if isinstance(max_queue, int) else max_queue
        self.max_queue = max(1, high)
        #: Reading resumes once the queue is down to this many messages.
        self.max_queue_low = max(0, min(self.max_queue - 1, low if low is not None else high // 4))
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = send_timeout
        self.logger = logger or logging.getLogger(f"geventws.{side.value}")
        self._protocol: Optional[Protocol] = None
        self._handshake = _PENDING
        # Server-side handshake material, set by the server before the handler runs.
        self._key = ""
        self._leftover = b""
        self._supported_subprotocols: tuple[str, ...] = ()
        self._deflate: Optional[tuple[str, Deflate]] = None
        self._answer: Optional[HandshakeAnswer] = None
        #: The negotiated ``Sec-WebSocket-Extensions`` value (permessage-deflate and its
        #: parameters), or ``None`` without compression; set when the handshake completes.
        self.extensions: Optional[str] = None
        # Receiving.
        # Received messages waiting for receive(): a deque while there are some, an
        # empty tuple while there are none (a deque costs 600 bytes, idle or not).
        self._messages: Union[deque[Data], tuple[()]] = ()
        self._wakeup = Event()  # set when messages arrive, a helper exits, or done
        self._reading = False  # some greenlet owns the read side (see the module doc)
        self._paused = False  # max_queue messages wait: nobody reads until the handler catches up
        self._watcher: Any = None  # read watcher, armed while nobody reads
        self._ssl_pending = getattr(sock, "pending", None)
        # A plain gevent socket wraps a non-blocking OS socket: writes try it directly
        # first (TLS sockets always go through gevent's wrapper).
        raw = getattr(sock, "_sock", None) if self._ssl_pending is None else None
        if raw is None or raw.gettimeout() != 0.0:
            raw = None
        self._send_nowait = raw.send if raw is not None else None
        # Server connections on plain sockets take a broadcast's shared frame directly.
        self._broadcast_raw = raw if side is Side.SERVER else None
        self._closer: Optional[Any] = None
        self._done = False
        # Keepalive: a periodic timer and a deadline timer, no greenlet while idle.
        self._ka_timer: Any = None
        self._ka_deadline: Any = None
        self._ka_waiting = False
        self._pings: dict[bytes, tuple[AsyncResult, float]] = {}
        # Sending: frames wait in the protocol's output queue; ``_unflushed`` counts
        # roughly how many bytes, to flush at once past the high-water mark.
        self._write_lock = Semaphore()
        # While a fragmented message is being sent: its greenlet, and an event set when
        # it is complete. Other messages wait for it.
        self._fragmenting: Optional[tuple[Any, Event]] = None
        self._unflushed = 0
        self._flush_cb: Any = None
        self._loop = gevent.get_hub().loop

    # -- the opening handshake ------------------------------------------------------

    def _prepare(
        self,
        key: str,
        leftover: bytes,
        subprotocols: tuple[str, ...],
        deflate: Optional[tuple[str, Deflate]] = None,
        answer: Optional[HandshakeAnswer] = None,
    ) -> None:
        """Server side: remember what :meth:`accept` needs (called by the server)."""
        self._key = key
        self._leftover = leftover
        self._supported_subprotocols = subprotocols
        self._deflate = deflate
        self._answer = answer

    def accept(
        self, subprotocol: Optional[str] = None, headers: Optional[HeadersLike] = None
    ) -> None:
        """Complete the opening handshake with 101 Switching Protocols.

        ``subprotocol`` must be one the client offered; by default the server's
        ``subprotocols`` option picks the first it supports that the client offered.
        ``headers`` are added to the response. Raises :class:`InvalidState` after
        :meth:`accept` or :meth:`reject`, or on a client connection.
        """
        if self.side is not Side.SERVER or self._handshake is not _PENDING:
            raise InvalidState(f"cannot accept: handshake already {self._handshake}")
        assert self.request is not None
        if subprotocol is None:
            subprotocol = select_subprotocol(
                self.request.subprotocols, self._supported_subprotocols
            )
        elif subprotocol not in self.request.subprotocols:
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        agreed, deflate = self._deflate if self._deflate is not None else (None, None)
        fields = accept_headers(self._key, subprotocol, agreed, headers=headers)
        self._handshake = _ACCEPTED
        self.subprotocol = subprotocol
        self.extensions = agreed
        try:
            with gevent.Timeout(
                self.close_timeout, ConnectionClosedError(1006, "handshake write timed out")
            ):
                if self._answer is not None:
                    leftover = self._answer.accept(fields)
                else:
                    self._sock.sendall(serialize_response(101, fields))
                    leftover = self._leftover
        except (OSError, ConnectionClosedError) as exc:
            self._done = True  # the connection never opened: closed, with 1006
            if isinstance(exc, ConnectionClosedError):
                raise
            raise ConnectionClosedError(1006, f"handshake write failed: {exc}") from exc
        self._leftover = b""
        self._start(Protocol(Side.SERVER, max_size=self.max_size, deflate=deflate), leftover)
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                "connection opened: %s %s",
                _format_address(self.remote_address),
                self.request.target,
            )

    def reject(
        self,
        status: int = 403,
        body: Union[str, bytes] = "",
        headers: Optional[HeadersLike] = None,
    ) -> None:
        """Refuse the upgrade with an HTTP ``status`` and end the connection.

        Returns ``None``, so a handler may ``return connection.reject(403)``. Raises
        :class:`InvalidState` after :meth:`accept` or :meth:`reject`, :class:`ValueError`
        for a status that is not 3xx, 4xx or 5xx.
        """
        if self.side is not Side.SERVER or self._handshake is not _PENDING:
            raise InvalidState(f"cannot reject: handshake already {self._handshake}")
        if not 300 <= status <= 599:
            raise ValueError("reject() needs a 3xx, 4xx or 5xx status")
        self._handshake = _REJECTED
        self._done = True
        if self.logger.isEnabledFor(logging.INFO):
            assert self.request is not None
            self.logger.info(
                "connection rejected: %s %s status=%d",
                _format_address(self.remote_address),
                self.request.target,
                status,
            )
        if self._answer is not None:
            self._answer.reject(status, body.encode() if isinstance(body, str) else body, headers)
        else:
            refuse(self._sock, status, body, headers, self.close_timeout)

    def _start(self, protocol: Protocol, leftover: bytes = b"") -> None:
        """Begin the open phase on ``protocol``; ``leftover`` are bytes already read."""
        self._protocol = protocol
        self._handshake = _ACCEPTED
        self._watcher = self._loop.io(self._sock.fileno(), 1)
        if self.ping_interval:
            self._ka_timer = self._loop.timer(self.ping_interval, self.ping_interval, ref=False)
            self._ka_timer.start(self._keepalive_tick)
        if leftover:
            self._reading = True
            try:
                self._process(leftover)
            finally:
                self._reading = False
        self._arm()

    def _ensure_open(self) -> Protocol:
        protocol = self._protocol
        if protocol is None:
            if self._handshake is _REJECTED:
                raise InvalidState("the connection was rejected")
            if self._done:  # the handshake's answer could not be written
                raise self._closed_error()
            self.accept()
            protocol = self._protocol
            assert protocol is not None
        return protocol

    # -- reading ----------------------------------------------------------------------

    def _arm(self) -> None:
        """Nobody reads now: make sure arriving bytes are read (see the module doc)."""
        protocol = self._protocol
        if self._done or self._reading or protocol is None:
            return
        if len(self._messages) >= self.max_queue:
            self._paused = True  # TCP pushes back until the handler catches up
            return
        if protocol.pending or (self._ssl_pending is not None and self._ssl_pending()):
            self._spawn_helper()  # input is already here, no readiness will be signalled
        elif not self._watcher.active:
            self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        # Runs in the hub: bytes arrived while nobody was reading.
        self._watcher.stop()
        if not self._reading and not self._done:
            self._spawn_helper()

    def _spawn_helper(self) -> None:
        self._reading = True  # claimed now, so no second reader starts meanwhile
        gevent.spawn_raw(self._helper)

    def _helper(self) -> None:
        protocol = self._protocol
        assert protocol is not None
        try:
            self._read_some()
            while protocol.pending and not self._done:
                gevent.sleep(0)  # let the handler answer what came before the close
                self._read_some()
        except ConnectionClosed:
            pass
        finally:
            self._reading = False
            self._wakeup.set()  # a handler waiting in receive() may take over
            self._arm()

    def _read_inline(self, timeout: Optional[float]) -> None:
        """Read once in the calling greenlet; raises :class:`TimeoutError`."""
        if self._watcher.active:
            self._watcher.stop()
        self._reading = True
        try:
            if timeout is None:
                self._read_some()
            else:
                with gevent.Timeout(timeout, _ReadTimeout):
                    self._read_some()
        except _ReadTimeout:
            raise TimeoutError(f"no message received within {timeout} seconds") from None
        finally:
            self._reading = False
        self._arm()

    def _read_some(self) -> None:
        """One ``recv`` (or the rest of a pending batch), processed. Only the greenlet
        that set ``_reading`` calls this."""
        protocol = self._protocol
        assert protocol is not None
        if protocol.pending:
            data = b""
        else:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except OSError as exc:
                if self.logger.isEnabledFor(logging.DEBUG):
                    self.logger.debug("connection lost: %s", exc)
                data = b""
            if not data:
                protocol.receive_eof()
                self._finish()
                return
        self._process(data)

    def _process(self, data: bytes) -> None:
        protocol = self._protocol
        assert protocol is not None
        events = protocol.receive_data(data)
        if protocol.output_pending:  # pongs, the close echo
            try:
                self._flush()
            except ConnectionClosed:
                protocol.receive_eof()
        if events:
            self._dispatch(events)
        if protocol.close_transport:
            self._finish()

    def _dispatch(self, events: list[Any]) -> None:
        messages = self._messages
        new = False
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                if not messages:
                    messages = self._messages = deque()
                messages.append(event)
                new = True
            elif kind is Pong:
                self._pong_received(event.data)
            # Ping (already answered by the protocol) and Close (it sets the state)
            # need nothing here.
        if new:
            self._wakeup.set()

    def _finish(self) -> None:
        """The connection is over: wake everyone, and close the socket in the background."""
        if self._done:
            return
        self._done = True
        protocol = self._protocol
        assert protocol is not None
        if protocol.error is not None:
            self.logger.info(
                "closing %s: %s (%d)",
                _format_address(self.remote_address),
                protocol.error,
                protocol.error.code,
            )
        self._stop_watchers()
        self._wakeup.set()
        if self._pings:
            error = self._closed_error()
            for result, _ in self._pings.values():
                result.set_exception(error)
            self._pings.clear()
        # The server closes TCP first (RFC 6455 §7.1.1); a client waits for it, unless
        # it failed the connection itself and owes the server nothing more.
        self._closer = gevent.spawn(
            close_socket,
            self._sock,
            0 if protocol.eof_rcvd else self.close_timeout,
            self.side is Side.SERVER or protocol.error is not None,
        )

    # -- receiving ------------------------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Data:
        """The next message: ``str`` for a text message, ``bytes`` for a binary one.

        Blocks until a message arrives or ``timeout`` seconds pass (then raises
        :class:`TimeoutError` and the connection stays usable). Messages that arrived
        before a close are delivered first; after that raises
        :class:`~geventws.ConnectionClosedOK` or :class:`~geventws.ConnectionClosedError`.
        """
        if self._protocol is None:
            self._ensure_open()
        while not self._messages:
            if self._done:
                raise self._closed_error()
            # Clear before anything that may yield: a wake-up meanwhile is not lost.
            self._wakeup.clear()
            if self._unflushed:
                self._flush()
            elif not self._reading:
                self._read_inline(timeout)
            elif not self._wakeup.wait(timeout):
                raise TimeoutError(f"no message received within {timeout} seconds")
        messages = self._messages
        message = messages.popleft()
        if not messages:
            self._messages = ()
        if self._paused and len(messages) <= self.max_queue_low:
            self._paused = False
            self._arm()
        return message

    def __iter__(self) -> Iterator[Data]:
        """Yield messages until the connection closes; ends quietly on a normal close
        (1000, 1001, no code) and raises :class:`~geventws.ConnectionClosedError`
        otherwise."""
        while True:
            try:
                yield self.receive()
            except ConnectionClosedOK:
                return

    # -- sending --------------------------------------------------------------------

    def send(
        self,
        message: Union[Data, bytearray, memoryview, Iterable[Union[Data, bytearray, memoryview]]],
        binary: bool = False,
        compress: Optional[bool] = None,
    ) -> None:
        """Send a message: a text frame by default, a binary frame with ``binary=True``.

        An iterable (a list, a generator...) of ``str`` or of bytes is sent as one
        fragmented message, a frame per item, each written as it comes; other
        greenlets' messages wait until it is complete, an empty iterable sends nothing,
        and an error from the iterable once the message started closes the connection
        with 1011 and propagates.

        A ``str`` is encoded as UTF-8. Bytes sent as text must be valid UTF-8, else
        :class:`ValueError`. With permessage-deflate negotiated, messages from the
        compression threshold up are compressed; ``compress=False`` sends this one as is
        (already-compressed data gains nothing), ``compress=True`` compresses it
        whatever its size. Returns once the frame is buffered; the buffer is written
        when this greenlet next blocks, or right away past 64 KiB, so ``send()`` blocks
        while the peer does not read. Raises :class:`~geventws.ConnectionClosed` when the
        connection is closing or closed.
        """
        protocol = self._protocol
        if protocol is None:
            protocol = self._ensure_open()
        if isinstance(message, str):
            data = message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            data = bytes(message)
            if not binary:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(_NOT_UTF8) from None
        elif isinstance(message, Iterable) and not isinstance(message, Mapping):
            self._send_fragments(message, binary, compress)
            return
        else:
            raise TypeError(f"cannot send {type(message).__name__}: use str or bytes")
        if self._done:
            raise self._closed_error()
        if self._fragmenting is not None:
            self._wait_fragmented_message()
        try:
            if binary:
                protocol.send_binary(data, compress)
            else:
                protocol.send_text(data, compress)
        except InvalidState:
            raise self._closed_error() from None
        self._queued(len(data))

    def _queued(self, size: int) -> None:
        """Account for a frame of about ``size`` bytes queued in the protocol: write at
        once past the high-water mark, else when this greenlet next yields."""
        self._unflushed += size + 2
        if self._unflushed >= _WRITE_HIGH_WATER:
            self._flush()
        elif self._flush_cb is None:
            self._flush_cb = self._loop.run_callback(self._flush_soon)

    def _wait_fragmented_message(self) -> None:
        """Wait until the fragmented message being sent is complete (messages never go
        between its frames)."""
        while self._fragmenting is not None:
            owner, done = self._fragmenting
            if owner is getcurrent():
                raise RuntimeError("cannot send a message inside a fragmented message")
            done.wait()

    def _send_fragments(
        self,
        fragments: Iterable[Union[Data, bytearray, memoryview]],
        binary: bool,
        compress: Optional[bool],
    ) -> None:
        """Send ``fragments`` as one message, a frame per item (RFC 6455 §5.4).

        Items of ``str`` make a text message; bytes-like items a binary one, or a text
        one with ``binary=False`` if they are valid UTF-8 together. An empty iterable
        sends nothing. Each fragment is written as it comes (when this greenlet next
        yields, or at once past 64 KiB), so a generator can stream a large message; an
        empty frame ends the message, as websockets does.
        Other greenlets' messages wait until this one is complete; pings, pongs and a
        close may go in between. If the iterable raises or yields a wrong item once the
        message has started, the connection is closed with 1011 and the error raised.
        """
        protocol = self._protocol
        assert protocol is not None
        iterator = iter(fragments)
        first = next(iterator, _END)
        if first is _END:
            return
        text = isinstance(first, str)
        decoder = None if text or binary else codecs.getincrementaldecoder("utf-8")()

        def encode(item: Union[Data, bytearray, memoryview]) -> bytes:
            if text and isinstance(item, str):
                return item.encode("utf-8")
            if not text and isinstance(item, (bytes, bytearray, memoryview)):
                data = bytes(item)
                if decoder is not None:
                    try:
                        decoder.decode(data)
                    except UnicodeDecodeError:
                        raise ValueError(_NOT_UTF8) from None
                return data
            raise TypeError("the fragments of a message must be all str or all bytes")

        if self._done:
            raise self._closed_error()
        if self._fragmenting is not None:  # one fragmented message at a time
            self._wait_fragmented_message()
        done = Event()
        self._fragmenting = (getcurrent(), done)
        as_binary = not text and binary
        try:
            # Each item goes out as soon as it is produced (not held back to learn
            # whether it is the last); an empty final frame ends the message.
            item: Any = first
            while item is not _END:
                data = encode(item)
                protocol.send_fragment(data, binary=as_binary, fin=False, compress=compress)
                self._queued(len(data))
                item = next(iterator, _END)
            if decoder is not None:
                try:
                    decoder.decode(b"", True)
                except UnicodeDecodeError:
                    raise ValueError(_NOT_UTF8) from None
            protocol.send_fragment(b"", binary=as_binary, fin=True, compress=compress)
            self._queued(0)
        except InvalidState:
            raise self._closed_error() from None
        except Exception:
            if protocol.sending_fragments and not self._done:
                self._fail(CloseCode.INTERNAL_ERROR, "error in fragmented message", True)
            raise
        finally:
            self._fragmenting = None
            done.set()

    def _send_prepared(self, prepared: _Prepared, limit: int) -> bool:
        """Queue a broadcast message without ever blocking the caller (see
        :func:`broadcast`). Returns False (message skipped) when the connection is not
        open or already has ``limit`` bytes or more waiting."""
        protocol = self._protocol
        if (
            protocol is None
            or self._done
            or protocol.state is not State.OPEN
            or self._unflushed >= limit
        ):
            return False
        if self.side is Side.CLIENT:  # client frames are masked each
            if prepared.binary:
                protocol.send_binary(prepared.data, prepared.compress)
            else:
                protocol.send_text(prepared.data, prepared.compress)
            self._unflushed += len(prepared.data)
        else:
            deflate = protocol.deflate
            frame, compressed = prepared.frame_for(deflate)
            if compressed:
                deflate.forget_context()  # type: ignore[union-attr]
            self._queue_frame(frame, 0)
            return True
        if self._flush_cb is None:  # written in the background
            self._flush_cb = self._loop.run_callback(self._flush_soon)
        return True

    def _queue_frame(self, frame: bytes, sent: int) -> None:
        """Queue what is left of a shared frame of which ``sent`` bytes were written
        directly, to be written in the background."""
        assert self._protocol is not None
        self._protocol.send_frame(frame[sent:] if sent else frame)
        self._unflushed += len(frame) - sent
        if self._flush_cb is None:
            self._flush_cb = self._loop.run_callback(self._flush_soon)

    def _send_nowait_or_zero(self, data: bytes) -> int:
        """Write what a plain socket takes right now; 0 if it would block."""
        assert self._send_nowait is not None
        try:
            return int(self._send_nowait(data))
        except (BlockingIOError, InterruptedError):
            return 0

    def _sendall(self, data: bytes) -> None:
        """Write all of ``data``, waiting as needed. On a plain socket one ``send``
        usually takes it all, which skips gevent's ``sendall`` and the ``getsockopt``
        call it makes every time; the rest, if any, goes through ``sendall``."""
        if self._send_nowait is not None:
            sent = self._send_nowait_or_zero(data)
            if sent == len(data):
                return
            if sent:
                self._sock.sendall(memoryview(data)[sent:])
                return
        self._sock.sendall(data)

    def ping(self, data: Union[str, bytes, None] = None) -> AsyncResult:
        """Send a ping; return an :class:`~gevent.event.AsyncResult` for its pong.

        ``result.get(timeout=...)`` gives the round-trip time in seconds, or raises
        :class:`~geventws.ConnectionClosed` if the connection closes first. Without
        ``data``, a random 4-byte payload is used. A pong also acknowledges every
        earlier ping still waiting (RFC 6455 §5.5.3 lets peers answer only the last).
        """
        protocol = self._protocol
        if protocol is None:
            protocol = self._ensure_open()
        if data is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            if payload in self._pings:
                raise ValueError("already waiting for a pong with the same data")
        if self._done or protocol.state is not State.OPEN:
            raise self._closed_error()
        protocol.send_ping(payload)
        result = AsyncResult()
        self._pings[payload] = (result, time.monotonic())
        self._flush()
        return result

    def _pong_received(self, data: bytes) -> None:
        if data not in self._pings:
            return  # unsolicited pong: ignored (RFC 6455 §5.5.3)
        now = time.monotonic()
        for payload in list(self._pings):
            result, sent_at = self._pings.pop(payload)
            result.set(now - sent_at)
            if payload == data:
                break

    def _flush_soon(self) -> None:
        # Runs in the hub once the sending greenlet blocked without flushing.
        self._flush_cb = None
        if self._unflushed:
            gevent.spawn(self._flush_quietly)

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except ConnectionClosed:
            pass  # the reader greenlet sees the broken connection and reports it

    def _flush(self) -> None:
        """Write everything the protocol queued, in order, under the write lock.

        Raises :class:`ConnectionClosedError` (1006) if the socket fails; the socket is
        then shut down so that the reader greenlet notices too.
        """
        if self._flush_cb is not None:
            self._flush_cb.stop()
            self._flush_cb = None
        protocol = self._protocol
        assert protocol is not None
        sendall = self._sendall
        failure: Optional[BaseException] = None
        with self._write_lock:
            while protocol.output_pending and failure is None:
                chunks = protocol.data_to_send()
                self._unflushed = 0
                timer = gevent.Timeout._start_new_or_dummy(self.send_timeout, _SendTimeout)
                try:
                    if len(chunks) == 1:
                        sendall(chunks[0])
                    elif sum(map(len, chunks)) <= _JOIN_LIMIT:
                        sendall(b"".join(chunks))
                    else:
                        for chunk in chunks:
                            sendall(chunk)
                except (OSError, _SendTimeout) as exc:
                    failure = exc
                finally:
                    timer.close()
        if failure is None:
            return
        protocol.data_to_send()  # drop the rest: the connection is gone
        if isinstance(failure, _SendTimeout):  # ``_finish`` logs it, as for keepalive
            self._fail(CloseCode.POLICY_VIOLATION, "send timed out", False)
            raise ConnectionClosedError(CloseCode.POLICY_VIOLATION, "send timed out")
        self._wake_reader()  # it reports the lost connection
        raise ConnectionClosedError(1006, f"write failed: {failure}") from failure

    # -- closing --------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection: send a close frame with ``code`` and ``reason``, wait up
        to ``close_timeout`` for the peer's close and for the TCP connection to end.

        Idempotent; never raises for a connection that is already closed. Buffered
        messages are written before the close frame. Raises :class:`ValueError` for a
        code that may not be sent (1004-1006, 1015, under 1000, 1016-2999, over 4999).
        """
        if self._protocol is None:
            if self._handshake is _REJECTED or self._done:
                return
            self.accept()
        protocol = self._protocol
        assert protocol is not None
        if not self._done and protocol.close_sent is None and protocol.state is State.OPEN:
            protocol.send_close(code, reason)
        with gevent.Timeout(self.close_timeout, False):
            try:
                if protocol.output_pending:
                    self._flush()
                # Read until the peer answers and the protocol says the link is over;
                # messages the peer sent meanwhile are still queued for receive().
                while not self._done:
                    self._wakeup.clear()
                    if self._reading:
                        self._wakeup.wait()
                    else:
                        self._read_inline(None)
            except ConnectionClosed:
                pass
        if not self._done:  # no answer in time
            self._end_transport()
            with gevent.Timeout(self.close_timeout, False):
                while not self._done:
                    self._wakeup.clear()
                    self._wakeup.wait()
            if not self._done:  # the reading greenlet is stuck: give up on it
                protocol.receive_eof()
                self._finish()
        self._wait_closer()

    def _wake_reader(self) -> None:
        """Shut the socket down both ways: a greenlet blocked in ``recv`` gets end of
        file and finishes the connection itself."""
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def _end_transport(self) -> None:
        """End the connection now, from a greenlet that may not be the one reading."""
        if self._reading:
            self._wake_reader()
        else:
            protocol = self._protocol
            assert protocol is not None
            protocol.receive_eof()
            self._finish()

    def _wait_closer(self) -> None:
        closer = self._closer
        if closer is not None and gevent.getcurrent() is not closer:
            closer.join(timeout=self.close_timeout)
            if not closer.dead:
                closer.kill(block=True, timeout=1)

    def _abort(self) -> None:
        """Make sure the socket is closed and no greenlet of ours is left (server's
        ``finally``)."""
        self._done = True
        self._stop_watchers()
        self._wait_closer()
        self._sock.close()

    def _stop_watchers(self) -> None:
        for watcher in (self._watcher, self._ka_timer, self._ka_deadline):
            if watcher is not None:
                watcher.stop()

    # -- keepalive and forced closes ------------------------------------------------------

    def _keepalive_tick(self) -> None:
        # Runs in the hub every ping_interval (``_finish`` stops the timer).
        if not self._ka_waiting:
            self._ka_waiting = True
            gevent.spawn_raw(self._keepalive_ping)

    def _keepalive_ping(self) -> None:
        try:
            result = self.ping()
        except (ConnectionClosed, InvalidState):
            self._ka_waiting = False
            return
        result.rawlink(self._keepalive_pong)
        if self.ping_timeout:
            if self._ka_deadline is None:
                self._ka_deadline = self._loop.timer(self.ping_timeout, ref=False)
            self._ka_deadline.start(self._keepalive_expired)

    def _keepalive_pong(self, result: Any) -> None:
        self._ka_waiting = False
        if self._ka_deadline is not None:
            self._ka_deadline.stop()

    def _keepalive_expired(self) -> None:
        # Runs in the hub when no pong came within ping_timeout.
        if self._done or not self._ka_waiting:
            return
        if self._paused:
            # Paused by back-pressure: the pong may be waiting in the socket, unread.
            self._ka_deadline.start(self._keepalive_expired)
            return
        # ``_finish`` logs it: "closing ADDRESS: keepalive ping timeout (1011)".
        gevent.spawn_raw(self._fail, CloseCode.INTERNAL_ERROR, "keepalive ping timeout", True)

    def _fail(self, code: int, reason: str, send_close: bool) -> None:
        """End the connection from our side without waiting for the peer: record
        ``code`` as the close code, try to send the close frame (briefly) if
        ``send_close``, and close the transport."""
        protocol = self._protocol
        if protocol is None or self._done:
            return
        protocol.fail(ProtocolError(reason, code))
        if send_close and not self._write_lock.locked():
            try:
                with gevent.Timeout(min(1.0, self.close_timeout), False):
                    self._flush()
            except ConnectionClosed:
                pass
        protocol.data_to_send()
        self._end_transport()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the closing handshake started or the connection was lost or rejected."""
        protocol = self._protocol
        if protocol is None:
            return self._handshake is _REJECTED or self._done
        return self._done or protocol.state is not State.OPEN

    @property
    def close_code(self) -> Optional[int]:
        """How the connection closed, ``None`` while it is open.

        The code in the peer's close frame (1005 when it had none); when geventws failed
        the connection itself (protocol error, message too big), the code it sent;
        1006 when the TCP connection ended without a closing handshake.
        """
        protocol = self._protocol
        if protocol is None:
            return None
        if protocol.error is not None:
            return protocol.error.code
        if protocol.close_rcvd is not None:
            return protocol.close_rcvd.code
        if self._done:
            return CloseCode.ABNORMAL_CLOSURE
        return None

    @property
    def close_reason(self) -> Optional[str]:
        """The reason matching :attr:`close_code` (``""`` when none was given)."""
        protocol = self._protocol
        if protocol is None:
            return None
        if protocol.error is not None:
            return str(protocol.error)
        if protocol.close_rcvd is not None:
            return protocol.close_rcvd.reason
        return "" if self._done else None

    def _closed_error(self) -> ConnectionClosed:
        code = self.close_code
        if code is None:  # closing, not closed yet: report what we sent
            protocol = self._protocol
            sent = protocol.close_sent if protocol is not None else None
            code, reason = (sent.code, sent.reason) if sent is not None else (1006, "")
        else:
            reason = self.close_reason or ""
        if code in _OK_CODES:
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason)

    def __repr__(self) -> str:
        state = self._handshake if self._protocol is None else self._protocol.state.name
        return f"<Connection {self.side.value} {_format_address(self.remote_address)} {state}>"


class _Prepared:
    """A broadcast message, framed once per way it goes out: uncompressed, and
    compressed once per distinct (window, memory level, level) among the connections
    that negotiated permessage-deflate."""

    __slots__ = ("_compressed", "_plain", "binary", "compress", "data")

    def __init__(self, data: bytes, binary: bool, compress: Optional[bool]) -> None:
        self.data = data
        self.binary = binary
        self.compress = compress
        self._plain: Optional[bytes] = None
        self._compressed: dict[tuple[int, int, int], bytes] = {}

    def frame_for(self, deflate: Optional[Deflate]) -> tuple[bytes, bool]:
        """The frame for a server connection with this codec, and whether it is
        compressed (from a fresh deflate stream, so any peer's context can take it)."""
        if deflate is not None and deflate.wants(len(self.data), self.compress):
            frame = self._compressed.get(deflate.settings)
            if frame is None:
                payload = deflate.compress_shared(self.data)
                frame = self._compressed[deflate.settings] = prepare_frame(
                    payload, self.binary, compressed=True
                )
            return frame, True
        if self._plain is None:
            self._plain = prepare_frame(self.data, self.binary)
        return self._plain, False


def log_refusal(logger: logging.Logger, address: Any, exc: InvalidRequest) -> None:
    """The INFO line for an upgrade request refused before the handler ran."""
    logger.info(
        "handshake failed: %s status=%d %s", _format_address(address), exc.status, exc.message
    )


def run_handler(
    handler: Callable[[Connection, Any], Any], connection: Connection, logger: logging.Logger
) -> None:
    """Run ``handler(connection, request)`` the way every server does: a closed
    connection ends it quietly; an exception is logged at ERROR and answered with 500
    before the handshake, 1011 after; a handler that returns gets its connection closed
    (1000). ``GreenletExit`` and other ``BaseException`` pass through."""
    request = connection.request
    try:
        handler(connection, request)
    except ConnectionClosed as exc:
        logger.debug("handler ended by a closed connection: %s", exc)
    except Exception:
        logger.error(
            "handler failed: %s %s",
            _format_address(connection.remote_address),
            getattr(request, "target", "-"),
            exc_info=True,
        )
        if connection._protocol is None:
            if not connection.closed:
                connection.reject(500, "Internal Server Error\n")
            return
        connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        return
    connection.close()


def end_connection(connection: Connection, started: float, logger: logging.Logger) -> None:
    """Release ``connection`` after its handler (never raises): socket closed, no
    greenlet left, and the INFO line ``connection closed`` for an opened connection."""
    connection._abort()
    if connection.close_code is not None and logger.isEnabledFor(logging.INFO):
        logger.info(
            "connection closed: %s %s code=%d duration=%.3fs",
            _format_address(connection.remote_address),
            getattr(connection.request, "target", "-"),
            connection.close_code,
            time.monotonic() - started,
        )


def broadcast(
    connections: Iterable[Connection],
    message: Union[str, bytes],
    binary: bool = False,
    *,
    limit: int = _WRITE_HIGH_WATER,
    compress: Optional[bool] = None,
) -> int:
    """Send ``message`` to every open connection in ``connections``; return how many
    it was queued to.

    The frame is built once (server side) and written to each plain socket right away
    if it takes it; whatever a socket can't take now, and everything for TLS or
    client-side connections, is written in the background. A connection that already
    has ``limit`` bytes (64 KiB by default) waiting is a slow consumer and is *skipped*
    for this message, as is one in the middle of sending a fragmented message (its
    frames can't be interrupted by another message). Never blocks on a slow client and
    never raises for a connection's failure (logged at DEBUG on ``geventws.server``). Raises
    :class:`ValueError` for bytes sent as text that aren't valid UTF-8.

    With compression, the message is compressed *once* from a fresh deflate stream for
    all the connections that negotiated the same window (``compress`` and the threshold
    as in :meth:`Connection.send`); each of those connections then starts its next
    message without the earlier context, since its peer's window changed.
    """
    data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    if not binary and not isinstance(message, str):
        data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    prepared = _Prepared(data, binary, compress)
    queued = 0
    # Connections that can take a shared frame right now (server side, plain socket,
    # open, nothing queued or being written) get it in one batch of non-blocking sends
    # per frame: the plain one, and one per compression setting. The others go through
    # their queues.
    plain: _Batch = ([], [], None)
    batches: dict[Optional[tuple[int, int, int]], _Batch] = {None: plain}
    size = len(data)
    open_ = State.OPEN
    for connection in connections if isinstance(connections, (set, list)) else list(connections):
        # (Nothing in this loop switches greenlets or runs user code: the set can't change.)
        try:
            raw = connection._broadcast_raw
            protocol = connection._protocol
            if (
                raw is not None
                and protocol is not None
                and protocol.state is open_
                and not connection._done
                and not protocol._output  # nothing queued before it
                and protocol._out_frag is None  # nor a fragmented message under way
                and not connection._write_lock.locked()  # nor being written
            ):
                fd = raw.fileno()  # -1 once closed: never another socket's descriptor
                if fd >= 0:
                    deflate = protocol.deflate
                    if deflate is None or not deflate.wants(size, compress):
                        batch = plain
                    else:
                        found = batches.get(deflate.settings)
                        if found is None:
                            found = batches[deflate.settings] = ([], [], deflate)
                        batch = found
                        deflate.forget_context()  # the shared frame is a fresh stream
                    batch[0].append(connection)
                    batch[1].append(fd)
                    continue
            queued += connection._send_prepared(prepared, limit)
        except Exception as exc:  # one bad connection must not stop the broadcast
            _log_broadcast_failure(connection, exc)
    # Nothing ran since the descriptors were collected (no greenlet switch), so each
    # one still belongs to its connection.
    for direct, fds, codec in batches.values():
        if fds:
            queued += _send_batch(direct, fds, prepared.frame_for(codec)[0])
    return queued


#: Connections taking one shared frame: them, their descriptors, the codec it is for.
_Batch = tuple[list[Connection], list[int], Optional[Deflate]]


def _send_batch(direct: list[Connection], fds: list[int], frame: bytes) -> int:
    """Write ``frame`` to each connection's descriptor at once, queue what a socket
    didn't take; return how many connections have the frame written or queued."""
    queued = len(fds)
    for index, sent in send_nowait(fds, frame):  # the sends that didn't take it all
        if sent < 0:  # the connection is lost; its reading side reports it
            queued -= 1
            continue
        try:  # the socket took part of it, or nothing: queue the rest
            direct[index]._queue_frame(frame, sent)
        except Exception as exc:
            queued -= 1
            _log_broadcast_failure(direct[index], exc)
    return queued


def _log_broadcast_failure(connection: Connection, exc: Exception) -> None:
    logging.getLogger("geventws.server").debug("broadcast to %r failed: %s", connection, exc)


def _send_nowait_python(fds: Sequence[int], data: bytes) -> list[tuple[int, int]]:
    """:func:`send_nowait` without the compiled module: ``os.write`` on each
    non-blocking socket (Python ignores SIGPIPE, so a closed peer is EPIPE). Returns
    ``(index, sent)`` for the writes that did not take all of ``data``: ``sent`` is 0
    when the socket would block, ``-errno`` on errors."""
    incomplete = []
    for index, fd in enumerate(fds):
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            sent = -(exc.errno or 1)
        if sent != len(data):
            incomplete.append((index, sent))
    return incomplete


send_nowait: Callable[[Sequence[int], bytes], list[tuple[int, int]]]
try:
    from ._speedups import send_nowait
except ImportError:  # pragma: no cover - built without a compiler, or on Windows
    send_nowait = _send_nowait_python


def _format_address(address: Optional[tuple[Any, ...]]) -> str:
    if not address:
        return "-"
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address)
