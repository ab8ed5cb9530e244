"""The blocking WebSocket connection handed to handlers and returned by the client.

:class:`Connection` is the public face; the work is done by small parts with one job
each: the sans-I/O :class:`~geventws.core.protocol.Protocol` decides everything about
the protocol, :class:`~geventws._reader.Reader` owns the read side (inline reads, the
on-demand helper, back-pressure), :class:`~geventws._writer.Writer` the write side (one
ordered queue, coalesced writes, no torn frame), :class:`~geventws._keepalive.Keepalive`
the pings, and :class:`~geventws._transport.Transport` ties them together once the
handshake is done and ends the link. See those modules for their theory of operation.

The cancellation contract
-------------------------
Any blocking call may be interrupted: by its own ``timeout``, by a
:class:`gevent.Timeout` around it, or by ``kill()``. Whatever interrupts it:

* a message that was read is never lost: messages are queued as soon as they are
  parsed, before any step that can block, and the next :meth:`~Connection.receive`
  returns them;
* bytes never go missing from the middle of a frame: an interrupted write keeps the
  unwritten rest ahead of everything else and finishes in the background, or the
  connection is failed and closed (operations then raise
  :class:`~geventws.ConnectionClosedError`); never an open connection over a corrupt
  stream;
* every call has one deadline covering all it does (flushes included), and the
  keepalive deadline starts when the ping is queued;
* sockets are closed in ``finally`` blocks, and closing never raises out of shutdown
  paths.

How a connection ends is :mod:`geventws._transport`'s job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Union

from gevent.event import AsyncResult

from ._deadline import NO_DEADLINE, Deadline
from ._fragments import Fragmenting, send_fragments
from ._sockets import SOCKET_ANSWER, HandshakeAnswer, format_address
from ._transport import Transport
from ._writer import HIGH_WATER, SharedBatch
from .core.events import CLOSED, OPEN
from .core.frames import CloseCode
from .core.headers import HeadersLike
from .core.protocol import Protocol, Side
from .core.request import Request
from .core.server_handshake import HandshakeState, ServerHandshake
from .core.shared import SharedMessage
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from .options import ConnectionSettings

if TYPE_CHECKING:
    from .pubsub import Topics

__all__ = ["Connection", "Data", "HandshakeAnswer"]

Data = Union[str, bytes]
Sendable = Union[str, bytes, bytearray, memoryview]

_NOTHING: Any = object()  # the end of an empty iterable


class Connection:
    """A WebSocket connection with a blocking, greenlet-friendly API.

    Server side, the handler receives it before the handshake is answered:
    :meth:`accept` and :meth:`reject` decide, and any other operation accepts
    implicitly. Client side, :func:`geventws.connect` returns it open.

    Every method may be called from any greenlet; sends from several greenlets never
    interleave. Receiving from several greenlets at once is allowed (each message goes
    to one of them) but rarely what you want. Blocking calls are safe to cancel (see the
    module doc).
    """

    # Slots keep the many idle connections of a server small; ``__dict__`` still lets
    # applications attach their own attributes (``connection.user = ...``).
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_answer",
        "_fragmenting",
        "_handshake",
        "_leftover",
        "_registry",
        "_settings",
        "_sock",
        "_transport",
        "extensions",
        "logger",
        "remote_address",
        "request",
        "response_headers",
        "side",
        "subprotocol",
    )

    def __init__(
        self,
        sock: Any,
        side: Side,
        settings: ConnectionSettings,
        *,
        handshake: Optional[ServerHandshake] = None,
        protocol: Optional[Protocol] = None,
        request: Optional[Request] = None,
        remote_address: Optional[tuple[Any, ...]] = None,
        leftover: bytes = b"",
        answer: Optional[HandshakeAnswer] = None,
        logger: Optional[logging.Logger] = None,
        topics: Optional[Topics] = None,
    ) -> None:
        self._sock = sock
        self._registry = topics  # the server's topics (server side)
        self.side = side
        self._settings = settings
        #: The upgrade request (server side) or ``None`` (client side).
        self.request = request
        #: The peer's address (behind a trusted proxy, the client's).
        self.remote_address = remote_address
        #: The negotiated subprotocol, or ``None``; set when the handshake completes.
        self.subprotocol: Optional[str] = None
        #: The negotiated ``Sec-WebSocket-Extensions`` value (permessage-deflate and its
        #: parameters), or ``None`` without compression; set when the handshake completes.
        self.extensions: Optional[str] = None
        #: The response headers of the handshake (client side).
        self.response_headers: Optional[Any] = None
        self.logger = logger or logging.getLogger(f"geventws.{side.value}")
        self._handshake = handshake  # server side, until decided
        self._answer = answer
        self._leftover = leftover
        self._transport: Optional[Transport] = None  # once the handshake is done
        # While a fragmented message is being sent: its greenlet, and an event set when
        # it is complete. Other messages wait for it.
        self._fragmenting: Optional[Fragmenting] = None
        if protocol is not None:
            self._open(protocol, leftover)

    @property
    def settings(self) -> ConnectionSettings:
        """This connection's options (``max_size``, ``max_queue``, ``close_timeout``...),
        shared with the other connections of its server."""
        return self._settings

    # -- the opening handshake --------------------------------------------------------

    def accept(
        self, subprotocol: Optional[str] = None, headers: Optional[HeadersLike] = None
    ) -> None:
        """Complete the opening handshake with 101 Switching Protocols.

        ``subprotocol`` must be one the client offered; by default the server's
        ``subprotocols`` option picks the first it supports that the client offered.
        ``headers`` are added to the response. Raises :class:`InvalidState` after
        :meth:`accept` or :meth:`reject`, or on a client connection;
        :class:`~geventws.ConnectionClosedError` (1006) when the answer can't be
        written within ``close_timeout``.
        """
        handshake = self._handshake
        if handshake is None:
            raise InvalidState("cannot accept: not a server connection waiting for it")
        settings = self._settings
        accepted = handshake.accept(
            subprotocol, headers, max_size=settings.max_size, max_fragments=settings.max_fragments
        )
        self.subprotocol = accepted.subprotocol
        self.extensions = accepted.extensions
        answer = self._answer or SOCKET_ANSWER
        try:
            leftover = answer.accept(
                self._sock,
                accepted,
                self._leftover,
                Deadline(settings.close_timeout, "handshake write timed out"),
            )
        except (OSError, TimeoutError) as exc:  # the connection never opened
            raise ConnectionClosedError(1006, f"handshake write failed: {exc}") from exc
        self._leftover = b""
        self._open(accepted.protocol, leftover)
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "connection opened: %s %s",
                format_address(self.remote_address),
                getattr(self.request, "target", "-"),
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
        handshake = self._handshake
        if handshake is None:
            raise InvalidState("cannot reject: not a server connection waiting for it")
        rejected = handshake.reject(status, body, headers)
        (self._answer or SOCKET_ANSWER).reject(self._sock, rejected, self._settings.close_timeout)

    def _open(self, protocol: Protocol, leftover: bytes) -> None:
        """Begin the open phase on ``protocol``; ``leftover`` are bytes already read."""
        self._transport = Transport(
            self._sock,
            protocol,
            self._settings,
            leftover=leftover,
            address=self.remote_address,
            logger=self.logger,
            on_end=self._leave_topics,
        )

    def _ensure_open(self) -> Transport:
        """The open link, accepting a pending handshake first."""
        transport = self._transport
        if transport is None:
            handshake = self._handshake
            if handshake is not None and handshake.state is HandshakeState.REJECTED:
                raise InvalidState("the connection was rejected")
            if handshake is not None and handshake.state is HandshakeState.ACCEPTED:
                raise ConnectionClosedError(1006, "the handshake's answer could not be written")
            self.accept()
            transport = self._transport
            assert transport is not None
        return transport

    # -- receiving ----------------------------------------------------------------------

    def receive(self, timeout: Optional[float] = None) -> Data:
        """The next message: ``str`` for a text message, ``bytes`` for a binary one.

        Blocks until a message arrives or ``timeout`` seconds pass, then raises
        :class:`TimeoutError`; the connection stays usable. What this connection sent
        before is written first, but never waited for (that is the background's job):
        a peer that doesn't read can't delay ``receive()``. Messages that
        arrived before a close are delivered first; after that raises
        :class:`~geventws.ConnectionClosedOK` or :class:`~geventws.ConnectionClosedError`.

        Cancelling ``receive()`` (its timeout, a :class:`gevent.Timeout`, ``kill()``) is
        safe: no message is lost, the next call returns it.
        """
        transport = self._transport or self._ensure_open()
        reader = transport.reader
        if reader.messages:
            return reader.pop()
        protocol = transport.protocol
        writer = transport.writer
        deadline = (
            NO_DEADLINE
            if timeout is None
            else Deadline(timeout, f"no message received within {timeout} seconds")
        )
        while not reader.messages:
            if protocol.state is CLOSED:
                raise protocol.closed_exception()
            if writer.buffered and not writer.write_nowait():
                # What we sent goes out before we wait, without waiting for it: a peer
                # that sends but doesn't read must not stop us from reading.
                writer.write_soon()
            if not reader.reading:
                reader.read(deadline)
                continue
            # Another greenlet reads: wait for it to queue messages or give up the read
            # side (cleared right before waiting: nothing switched since the check).
            wakeup = reader.wakeup
            wakeup.clear()
            if not wakeup.wait(deadline.remaining()):
                raise deadline.error()
        return reader.pop()

    def __iter__(self) -> Connection:
        """The connection is its own iterator of messages (see :meth:`__next__`)."""
        return self

    def __next__(self) -> Data:
        """:meth:`receive`; ``StopIteration`` on a normal close (1000, 1001, none), and
        :class:`~geventws.ConnectionClosedError` on any other."""
        try:
            return self.receive()
        except ConnectionClosedOK:
            raise StopIteration from None

    # -- sending ------------------------------------------------------------------------

    def send(
        self,
        message: Union[Sendable, Iterable[Sendable]],
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
        whatever its size. Returns once the frame is queued; the queue is written when
        this greenlet next yields, or right away past 64 KiB, so ``send()`` blocks while
        the peer does not read. Raises :class:`~geventws.ConnectionClosed` when the
        connection is closing or closed.

        Cancelling ``send()`` is safe and does not withdraw the message: once queued, it
        is written in full, in order, unless the connection fails.
        """
        transport = self._transport or self._ensure_open()
        protocol = transport.protocol
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            if isinstance(message, Iterable) and not isinstance(message, Mapping):
                self._send_fragments(transport, message, binary, compress)
                return
            raise TypeError(f"cannot send {type(message).__name__}: use str or bytes")
        while self._fragmenting is not None:
            self._fragmenting.wait()
        try:
            if binary:
                protocol.send_binary(message, compress)
            else:
                protocol.send_text(message, compress)
        except InvalidState:
            raise protocol.closed_exception() from None
        transport.queued(protocol)

    def _send_fragments(
        self,
        transport: Transport,
        fragments: Iterable[Sendable],
        binary: bool,
        compress: Optional[bool],
    ) -> None:
        """Send ``fragments`` as one message (see :func:`geventws._fragments.send`),
        one fragmented message at a time; a failure once it started closes with 1011."""
        protocol = transport.protocol
        iterator = iter(fragments)
        first = next(iterator, _NOTHING)
        if first is _NOTHING:
            return  # an empty iterable sends nothing
        while self._fragmenting is not None:
            self._fragmenting.wait()
        current = self._fragmenting = Fragmenting()
        try:
            send_fragments(
                protocol, first, iterator, binary=binary, compress=compress, queued=transport.queued
            )
        except Exception:
            if protocol.sending_fragments and protocol.state is OPEN:
                transport.fail(CloseCode.INTERNAL_ERROR, "error in fragmented message")
            raise
        finally:
            self._fragmenting = None
            current.done.set()

    def send_shared(
        self,
        message: SharedMessage,
        *,
        limit: int = HIGH_WATER,
        batch: Optional[SharedBatch] = None,
    ) -> bool:
        """Queue a message framed once for many connections (what
        :func:`~geventws.broadcast` and topics use), never blocking.

        Returns False when it is skipped: the connection is not open, it is sending a
        fragmented message, or ``limit`` bytes still wait once its socket took what it
        can (a slow consumer). Written when this greenlet yields; with a ``batch``
        (:meth:`SharedBatch.current`), with this turn's other shared frames, in one
        ``send`` per connection. :func:`~geventws.broadcast` inlines this: keep in step."""
        transport = self._transport
        if transport is None:
            return False
        protocol = transport.protocol
        writer = transport.writer
        if protocol.state is not OPEN or not writer.make_room(limit):
            return False
        if self.side is Side.CLIENT:  # client frames are masked each: no sharing
            if protocol.sending_fragments:
                return False
            if message.binary:
                protocol.send_binary(message.data, message.compress)
            else:
                protocol.send_text(message.data, message.compress)
            writer.queue(protocol.data_to_send())
            writer.write_soon()
            return True
        try:
            frame = protocol.send_shared(message)
        except InvalidState:
            return False
        if batch is not None:
            batch.add(writer, frame)
        else:
            writer.queue([frame])
            writer.write_soon()
        return True

    def ping(self, data: Union[str, bytes, None] = None) -> AsyncResult:
        """Send a ping; return an :class:`~gevent.event.AsyncResult` for its pong.

        ``result.get(timeout=...)`` gives the round-trip time in seconds, or raises
        :class:`~geventws.ConnectionClosed` if the connection closes first. Without
        ``data``, a random 4-byte payload is used. A pong also acknowledges every
        earlier ping still waiting (RFC 6455 §5.5.3 lets peers answer only the last).
        The ping is written when this greenlet yields; ``ping()`` never blocks.
        """
        transport = self._transport or self._ensure_open()
        payload = None if data is None else data.encode() if isinstance(data, str) else data
        try:
            return transport.keepalive.ping(payload)
        except InvalidState:
            raise transport.protocol.closed_exception() from None

    # -- closing --------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection: send a close frame with ``code`` and ``reason``, wait
        for the peer's close, then end TCP (a server closes it first; a client waits for
        the server to), all within ``close_timeout``.

        Idempotent; never raises for a connection that is already closed. Messages
        queued before are written before the close frame; messages the peer sent
        meanwhile stay available to :meth:`receive`. Raises :class:`ValueError` for a
        code that may not be sent (1004-1006, 1015, under 1000, 1016-2999, over 4999).
        """
        if self._transport is None:
            handshake = self._handshake
            if handshake is None or handshake.state is not HandshakeState.PENDING:
                return  # rejected, or the answer could not be written
            self.accept()
        transport = self._transport
        assert transport is not None
        protocol = transport.protocol
        reader = transport.reader
        writer = transport.writer
        deadline = Deadline(self._settings.close_timeout)
        if protocol.state is OPEN and protocol.close_sent is None:
            protocol.send_close(code, reason)
            writer.queue(protocol.data_to_send())
        try:
            writer.write(deadline)
            # Read until the peer answers and the protocol says the link is over;
            # messages the peer sent meanwhile are queued for receive().
            while protocol.state is not CLOSED:
                if not reader.reading:
                    reader.read(deadline)
                    continue
                wakeup = reader.wakeup
                wakeup.clear()
                if not wakeup.wait(deadline.remaining()):
                    break
        except (ConnectionClosed, TimeoutError):
            pass
        if protocol.state is not CLOSED:  # no answer in time
            transport.end()
        transport.wait_closed(deadline)

    def abort(self) -> None:
        """Release the connection now (the server calls it when the handler is done):
        out of its topics, no greenlet of it left, its socket closed. Never raises."""
        self._leave_topics()
        if self._transport is not None:
            self._transport.release()
        self._sock.close()

    # -- topics ---------------------------------------------------------------------------

    def subscribe(self, topic: str, timeout: Optional[float] = None) -> None:
        """Subscribe this connection to ``topic``: every message published to it
        afterwards, by any connection or server of any process sharing the server's
        broker, reaches this connection (see :doc:`/topics/pubsub`).

        Returns once the subscription is in force everywhere: the first local
        subscriber of a topic waits (at most ``timeout`` seconds, default 5) for the
        broker's confirmation. Raises :class:`~geventws.pubsub.BrokerUnavailable` when
        the broker can't confirm in time; the subscription is kept all the same (local
        messages arrive, and it is restored when the broker is back). Accepts a pending
        handshake first. Raises :class:`~geventws.ConnectionClosed` on a closed
        connection, :class:`InvalidState` on a client connection, :class:`ValueError`
        for a topic that isn't a non-empty string. Subscribing twice is harmless; a
        connection leaves all its topics when it closes."""
        registry = self._require_topics()
        transport = self._transport or self._ensure_open()
        if transport.protocol.state is not OPEN:
            raise transport.protocol.closed_exception()
        registry.subscribe(self, topic, timeout)

    def unsubscribe(self, topic: str) -> bool:
        """Leave ``topic``; return whether the connection was subscribed. Never blocks."""
        return self._require_topics().unsubscribe(self, topic)

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection is subscribed to."""
        registry = self._registry
        return frozenset() if registry is None else registry.topics_of(self)

    def publish(
        self, topic: str, message: Union[str, bytes, bytearray, memoryview], binary: bool = False
    ) -> int:
        """Send ``message`` to every *other* subscriber of ``topic`` (not this connection,
        as in uWebSockets and Bun), in this process and, through the broker, in the
        others; return the number of local deliveries.

        The message is framed once and compressed once per setting; slow consumers are
        skipped, as by :func:`~geventws.broadcast`. Never blocks. Per publisher,
        subscribers see messages in publish order. Raises :class:`ValueError` for text
        that isn't valid UTF-8 (nothing is sent), :class:`InvalidState` on a client
        connection.
        """
        if isinstance(message, (bytearray, memoryview)):
            message = bytes(message)
        return self._require_topics().publish(topic, message, binary, exclude=self)

    def _require_topics(self) -> Topics:
        registry = self._registry
        if registry is None:
            raise InvalidState("topics are for server connections")
        return registry

    def _leave_topics(self) -> None:
        registry = self._registry
        if registry is not None:
            registry.unsubscribe_all(self)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------

    @property
    def status(self) -> Optional[int]:
        """The HTTP status the opening handshake was answered with (server side): 101,
        the :meth:`reject` status, or ``None`` while pending."""
        handshake = self._handshake
        return None if handshake is None else handshake.status

    @property
    def handshake_pending(self) -> bool:
        """Whether the opening handshake waits for :meth:`accept` or :meth:`reject`
        (server side, before the handler decided)."""
        handshake = self._handshake
        return (
            self._transport is None
            and handshake is not None
            and handshake.state is HandshakeState.PENDING
        )

    @property
    def closed(self) -> bool:
        """True once the closing handshake started or the connection was lost or rejected."""
        transport = self._transport
        if transport is None:
            handshake = self._handshake
            return handshake is not None and handshake.state is not HandshakeState.PENDING
        return transport.protocol.state is not OPEN

    @property
    def close_code(self) -> Optional[int]:
        """How the connection closed, ``None`` while it is open.

        The code in the peer's close frame (1005 when it had none); when geventws failed
        the connection itself (protocol error, message too big, keepalive or send
        timeout), the code it sent; 1006 when the TCP connection ended without a closing
        handshake.
        """
        transport = self._transport
        return None if transport is None else transport.protocol.close_code

    @property
    def close_reason(self) -> Optional[str]:
        """The reason matching :attr:`close_code` (``""`` when none was given)."""
        transport = self._transport
        return None if transport is None else transport.protocol.close_reason

    def __repr__(self) -> str:
        if self._transport is not None:
            state = self._transport.protocol.state.name
        elif self._handshake is not None:
            state = self._handshake.state.value
        else:
            state = "-"
        return f"<Connection {self.side.value} {format_address(self.remote_address)} {state}>"
