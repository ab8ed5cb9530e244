"""The read side of a connection: inline reads, an on-demand helper, back-pressure.

Theory of operation
-------------------
Whoever needs bytes reads the socket itself: a handler blocked in ``receive()`` with
nothing queued calls ``recv`` *inline* (:meth:`Reader.read`), feeds the protocol and
returns the first message, with no other greenlet involved. While nobody reads (the
handler is busy elsewhere, or only pushes), an I/O watcher is armed on the socket; when
bytes arrive, its callback spawns a short-lived *helper* greenlet that reads once,
answers pings, sees a close, queues the messages and exits. So an idle connection costs
one greenlet (its handler), the echo path costs no extra switch, and a handler that
never receives still answers pings and notices a close. :attr:`Reader.reading` says
whether some greenlet owns the read side; only that one calls ``recv``.

Nothing is lost to cancellation: the one place a reader waits is for the socket to be
readable (on a plain socket, the socket's own read watcher, then a non-blocking
``recv``; over TLS, inside gevent's ``recv``), and gevent raises there (a deadline, a
:class:`gevent.Timeout`, ``kill()``) before any byte is taken. Bytes that were read
are processed at once, and :meth:`Reader.process` never blocks: messages go to
:attr:`Reader.messages` and the protocol's answers (pongs, the close echo) to the
writer's queue, to be written soon. Whatever interrupts a reader, it
gives the read side up in a ``finally`` and re-arms the watcher, so the connection keeps
answering pings.

Back-pressure: once ``high`` messages wait, the watcher is not re-armed: nobody reads,
the kernel buffers fill up and TCP pushes back on the peer. Reading resumes when the
application has taken the queue down to ``low``.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import gevent
from gevent.event import Event
from gevent.exceptions import ConcurrentObjectUseError

from ._deadline import Deadline
from ._sockets import recv_into_now, recv_now
from ._writer import Writer
from .core.events import CLOSED
from .core.protocol import Pong, Protocol

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Reader"]

Data = Union[str, bytes]

_RECV_SIZE = 262144


class Reader:
    """The read side of one connection over ``protocol``.

    ``owner`` is the connection's :class:`~geventws._transport.Transport` (``None``
    once the link is over and its socket closed): each pong goes to its keepalive, and
    its ``finish()`` runs once the protocol says the transport should close;
    ``high``/``low`` are the back-pressure marks.
    """

    __slots__ = (
        "_arming",
        "_logger",
        "_owner",
        "_protocol",
        "_raw",
        "_sock",
        "_ssl_pending",
        "_wakeup",
        "_watcher",
        "_writer",
        "high",
        "low",
        "messages",
        "paused",
        "reading",
    )

    def __init__(
        self,
        sock: Any,
        protocol: Protocol,
        writer: Writer,
        *,
        owner: Optional[Transport],
        high: int,
        low: int,
        logger: logging.Logger,
        raw: Any = None,
    ) -> None:
        self._sock = sock
        # The OS socket under a plain gevent socket, read directly (see _read_once);
        # None for TLS, whose bytes come through the TLS layer.
        self._raw = raw if raw is not None and hasattr(sock, "_read_event") else None
        self._protocol = protocol
        self._writer = writer
        self._owner = owner
        self._logger = logger
        self.high = high
        self.low = low
        #: Received messages waiting for ``receive()``: a deque while there are some, an
        #: empty tuple while there are none (a deque costs 600 bytes, idle or not).
        self.messages: Union[deque[Data], tuple[()]] = ()
        self._wakeup: Optional[Event] = None  # made when someone first waits
        #: Whether some greenlet owns the read side (only that one calls ``recv``).
        self.reading = False
        #: Whether reading is paused by back-pressure.
        self.paused = False
        # TLS may hold decrypted bytes no readiness event will announce.
        self._ssl_pending: Optional[Callable[[], int]] = sock.pending if raw is None else None
        self._watcher: Any = None  # made when nobody reads for a loop iteration
        self._arming = False  # a loop callback will arm the watcher

    @property
    def wakeup(self) -> Event:
        """Set when messages arrive, when a reader gives the read side up, and at the
        end; made on first use (most connections never wait for another reader)."""
        wakeup = self._wakeup
        if wakeup is None:
            wakeup = self._wakeup = Event()
        return wakeup

    @property
    def done(self) -> bool:
        """Whether the transport is to be closed: nothing more to read."""
        return self._protocol.state is CLOSED

    def start(self, leftover: bytes) -> None:
        """Begin reading; ``leftover`` are bytes read past the handshake."""
        if leftover:
            self.reading = True
            try:
                self.process(leftover, False)
            finally:
                self.reading = False
        self.arm_soon()

    # -- who reads --------------------------------------------------------------------

    def arm_soon(self) -> None:
        """Have :meth:`arm` run once the calling greenlet yields: a handler that reads
        again right away (the usual case) never needs the watcher, which is then never
        even made."""
        if not self._arming:
            self._arming = True
            gevent.get_hub().loop.run_callback(self._arm_in_loop)

    def _arm_in_loop(self) -> None:
        self._arming = False
        self.arm()

    def arm(self) -> None:
        """Nobody reads now: make sure arriving bytes are read (see the module doc)."""
        if self.reading or self._protocol.state is CLOSED:
            return
        if len(self.messages) >= self.high:
            self.paused = True  # TCP pushes back until the application catches up
            return
        if self._protocol.pending or (self._ssl_pending is not None and self._ssl_pending()):
            self._spawn_helper()  # input is already here: no readiness will be signalled
            return
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        if not watcher.active:
            watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        # A loop callback: bytes arrived while nobody was reading.
        self._watcher.stop()
        if not self.reading and self._protocol.state is not CLOSED:
            self._spawn_helper()

    def _spawn_helper(self) -> None:
        self.reading = True  # claimed now, so no second reader starts meanwhile
        gevent.spawn_raw(self._helper)

    def _helper(self) -> None:
        try:
            self._read_once(None)
            while self._protocol.pending and self._protocol.state is not CLOSED:
                gevent.sleep(0)  # let the handler answer what came before the close
                self._read_once(None)
        finally:
            self._release()

    def _release(self) -> None:
        self.reading = False
        if self._wakeup is not None:
            self._wakeup.set()  # a greenlet waiting to read may take over
        self.arm_soon()

    def read(self, deadline: Deadline) -> None:
        """Read once in the calling greenlet and process what came (the caller checked
        that nobody else reads). Raises :class:`TimeoutError` when ``deadline`` passes
        first; safe to cancel in any way (nothing read is lost, the read side is given
        up and the watcher re-armed)."""
        watcher = self._watcher
        if watcher is not None and watcher.active:
            watcher.stop()
        self.reading = True
        try:
            self._read_once(deadline)
        finally:
            self._release()

    def _read_once(self, deadline: Deadline | None) -> None:
        protocol = self._protocol
        if protocol.pending:
            self.process(b"", False)
            return
        into = protocol.receive_buffer()  # a large frame's own buffer, if any
        data: Union[bytes, int, None]
        try:
            data = self._recv_now(into)
            if data is None:
                if deadline is None or deadline.unbounded:
                    data = self._wait_and_recv(into)
                else:
                    with deadline.timeout():
                        data = self._wait_and_recv(into)
        except TimeoutError:
            raise  # the deadline (an OSError too, but not a lost connection)
        except OSError as exc:
            if self._logger.isEnabledFor(logging.DEBUG):
                self._logger.debug("connection lost: %s", exc)
            data = b""
        self.process(data, not data)

    def _recv_now(self, into: Optional[memoryview]) -> Union[bytes, int, None]:
        """What a plain socket has now (bytes, or the count read into ``into``), without
        waiting; ``None`` when nothing yet, and always over TLS (read by waiting)."""
        raw = self._raw
        if raw is None:
            return None
        return recv_now(raw, _RECV_SIZE) if into is None else recv_into_now(raw, into)

    def _wait_and_recv(self, into: Optional[memoryview]) -> Union[bytes, int]:
        """Wait until the socket is readable, then read. Over TLS, gevent's ``recv``.
        On a plain socket, what gevent's ``recv`` does, on the socket's own read watcher
        (``close()`` from another greenlet still interrupts the wait), but without its
        exception and the frame object the exception's traceback makes, which an idle
        connection would keep while it waits. The wait is the only switch: cancelled
        there, nothing was read."""
        sock = self._sock
        if self._raw is None:
            data: Union[bytes, int] = (
                sock.recv(_RECV_SIZE) if into is None else sock.recv_into(into)
            )
            return data
        event = sock._read_event
        if event is None:  # closed meanwhile (the descriptor may not be, yet)
            raise OSError(errno.EBADF, "socket closed")
        if event.callback is not None:
            raise ConcurrentObjectUseError("the socket is already read by another greenlet")
        wait = sock.hub.wait
        while True:
            wait(event)
            now = self._recv_now(into)
            if now is not None:
                return now

    # -- what was read ------------------------------------------------------------------

    def process(self, data: Union[bytes, int], eof: bool) -> None:
        """Feed ``data`` (or the end of the transport) to the protocol: messages to the
        queue, answers to the writer, pongs to the keepalive, the end to ``finish()``.
        An ``int`` is the count of bytes read into the protocol's
        :meth:`~geventws.core.protocol.Protocol.receive_buffer`. Never blocks, so
        nothing it took from the protocol can be lost."""
        protocol = self._protocol
        if eof:
            protocol.receive_eof()
            events: list[Any] = []
        elif type(data) is int:
            events = protocol.received_into(data)
        else:
            events = protocol.receive_data(data)  # type: ignore[arg-type]
        output = protocol.data_to_send()
        if output:  # pongs, the close echo
            self._writer.queue(output)
            self._writer.write_soon()
        if events:
            messages = self.messages
            new = False
            for event in events:
                kind = type(event)
                if kind is str or kind is bytes:
                    if not messages:
                        messages = self.messages = deque()
                    messages.append(event)
                    new = True
                elif kind is Pong and self._owner is not None:
                    self._owner.keepalive.pong(event.data)
                # Ping (answered by the protocol) and Close (it sets the state) need
                # nothing here.
            if new and self._wakeup is not None:
                self._wakeup.set()
        if protocol.state is CLOSED and self._owner is not None:
            self._owner.finish()

    def pop(self) -> Data:
        """The oldest queued message (the caller checked there is one); resumes
        reading once the queue is down to ``low``."""
        messages = self.messages
        message = messages.popleft()  # type: ignore[union-attr]
        if not messages:
            self.messages = ()
        if self.paused and len(messages) <= self.low:
            self.paused = False
            self.arm()
        return message

    def drain(self, deadline: Deadline) -> None:
        """After the end: read (and discard) until the peer closes its side or
        ``deadline`` passes; waits for another reader to give the read side up first.
        Never raises."""
        sock = self._sock
        try:
            while True:
                if self.reading:
                    self.wakeup.clear()
                    if not self.wakeup.wait(deadline.remaining()):
                        return
                    continue
                self.reading = True
                try:
                    with deadline.timeout():
                        while sock.recv(65536):
                            pass
                finally:
                    self.reading = False
                return
        except (OSError, TimeoutError):
            return

    def stop(self) -> None:
        """Stop watching the socket (the connection is over)."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._wakeup is not None:
            self._wakeup.set()
