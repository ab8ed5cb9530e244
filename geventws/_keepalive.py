"""Pings and pongs of a connection: the application's ``ping()`` and the keepalive.

The keepalive costs no greenlet and no timer of its own while idle. Every connection of
a hub with the same ``interval`` sits in one :class:`_Wheel`: a single loop timer that
ticks eight times per interval and pings the connections of one slot of eight each time,
so each connection is pinged every ``interval`` and the pings of many connections are
spread over the interval rather than sent in one burst. A ping is *queued* in the loop
callback itself (queueing never blocks) and the ``timeout`` deadline, a timer made for
that ping, starts at that moment, not when the ping is finally written. So a peer that
stopped reading, behind which our own sends are blocked, is still closed with 1011 after
``timeout`` (the blocked send then raises). A pong acknowledges its ping and every
earlier one still waiting (RFC 6455 §5.5.3 lets peers answer only the last). While
back-pressure pauses reading, the pong may sit unread in the socket: the deadline is
then extended rather than failing a peer we chose not to read.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import gevent
from gevent.event import AsyncResult

from ._writer import Writer
from .core.protocol import Protocol
from .exceptions import InvalidState

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Keepalive"]

_SLOTS = 8  # ticks per interval


class Keepalive:
    """The pings of one connection over ``protocol`` and ``writer``.

    ``interval`` and ``timeout`` configure the keepalive (``None`` turns either off).
    ``owner`` is the connection's :class:`~geventws._transport.Transport` (``None``
    once the link is over and its socket closed): its ``keepalive_expired()`` runs in a
    new greenlet when a keepalive pong is late, and its reader's ``paused`` says
    whether back-pressure paused reading.
    """

    __slots__ = (
        "_deadline",
        "_owner",
        "_pings",
        "_protocol",
        "_waiting",
        "_wheel",
        "_writer",
        "interval",
        "timeout",
    )

    def __init__(
        self,
        protocol: Protocol,
        writer: Writer,
        owner: Optional[Transport],
        *,
        interval: Optional[float],
        timeout: Optional[float],
    ) -> None:
        self._protocol = protocol
        self._writer = writer
        self._owner = owner
        self.interval = interval
        self.timeout = timeout
        self._pings: Optional[dict[bytes, tuple[AsyncResult, float]]] = None
        self._wheel: Optional[_Wheel] = None
        self._deadline: Any = None  # the timer of the keepalive ping awaiting its pong
        self._waiting: Optional[bytes] = None  # that ping's payload

    def start(self) -> None:
        """Start the periodic ping, if configured."""
        if self.interval:
            self._wheel = _Wheel.of(self.interval)
            self._wheel.add(self)

    def ping(self, data: Optional[bytes] = None) -> AsyncResult:
        """Queue a ping (random 4 bytes without ``data``) and have it written soon;
        return the :class:`~gevent.event.AsyncResult` of its pong (round-trip seconds).
        Never blocks. Raises :class:`InvalidState` once closing, :class:`ValueError` for
        a payload already waiting for its pong or over 125 bytes."""
        return self._send(data)[1]

    def _send(self, data: Optional[bytes]) -> tuple[bytes, AsyncResult]:
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if data is None:
            data = os.urandom(4)
            while data in pings:
                data = os.urandom(4)
        elif data in pings:
            raise ValueError("already waiting for a pong with the same data")
        self._protocol.send_ping(data)
        self._writer.queue(self._protocol.data_to_send())
        self._writer.write_soon()
        result = AsyncResult()
        pings[data] = (result, time.monotonic())
        return data, result

    def tick(self) -> None:
        """Time for the periodic ping (a loop callback of the wheel): queue one unless
        one is still waiting; its deadline starts now, while it is queued."""
        if self._waiting is not None:
            return
        try:
            self._waiting, _ = self._send(None)
        except InvalidState:
            return
        if self.timeout:
            self._deadline = gevent.get_hub().loop.timer(self.timeout, ref=False)
            self._deadline.start(self._expired)

    def pong(self, data: bytes) -> None:
        """A pong arrived: resolve its ping and the earlier ones (unsolicited pongs are
        ignored, RFC 6455 §5.5.3)."""
        pings = self._pings
        if not pings or data not in pings:
            return
        now = time.monotonic()
        for payload in list(pings):
            result, sent_at = pings.pop(payload)
            result.set(now - sent_at)
            if payload == self._waiting:
                self._waiting = None
                if self._deadline is not None:
                    self._deadline.stop()
                    self._deadline = None
            if payload == data:
                break

    def _expired(self) -> None:
        # A loop callback: no pong within ``timeout`` of queueing the ping.
        owner = self._owner
        if self._waiting is None or owner is None:
            return
        if owner.reader.paused:
            # Paused by back-pressure: the pong may be waiting in the socket, unread.
            self._deadline.start(self._expired)
            return
        gevent.spawn_raw(owner.keepalive_expired)

    @property
    def unanswered(self) -> bool:
        """Whether a ping of ours still waits for its pong."""
        return bool(self._pings)

    def stop(self) -> None:
        """Stop pinging; pings still waiting raise the connection's
        :meth:`~geventws.core.protocol.Protocol.closed_exception`."""
        if self._wheel is not None:
            self._wheel.discard(self)
            self._wheel = None
        if self._deadline is not None:
            self._deadline.stop()
            self._deadline = None
        pings = self._pings
        if pings:
            closed = self._protocol.closed_exception()
            for result, _ in pings.values():
                result.set_exception(closed)
            pings.clear()


class _Wheel:
    """The keepalives of one hub with one interval: a timer ticking :data:`_SLOTS`
    times per interval, each tick pinging one slot's connections. A connection joins
    the slot that comes round last, so its first ping is about one interval after it
    opened. The timer runs only while the wheel has connections."""

    __slots__ = ("__weakref__", "_next", "_slots", "_timer")

    _wheels: ClassVar[weakref.WeakKeyDictionary[Any, dict[float, _Wheel]]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, interval: float) -> _Wheel:
        """The wheel of ``interval`` in the current hub."""
        hub = gevent.get_hub()
        wheels = cls._wheels.get(hub)
        if wheels is None:
            wheels = cls._wheels[hub] = {}
        wheel = wheels.get(interval)
        if wheel is None:
            wheel = wheels[interval] = cls(hub.loop, interval)
        return wheel

    def __init__(self, loop: Any, interval: float) -> None:
        self._slots: list[set[Keepalive]] = [set() for _ in range(_SLOTS)]
        self._next = 0  # the slot the next tick pings
        step = interval / _SLOTS
        self._timer = loop.timer(step, step, ref=False)

    def add(self, keepalive: Keepalive) -> None:
        if not any(self._slots):
            self._timer.start(self._tick)
        self._slots[self._next - 1].add(keepalive)  # the last to come round

    def discard(self, keepalive: Keepalive) -> None:
        for slot in self._slots:
            if keepalive in slot:
                slot.discard(keepalive)
                break
        if not any(self._slots):
            self._timer.stop()

    def _tick(self) -> None:
        # A loop callback: ping the connections of the slot whose turn it is.
        slot = self._slots[self._next]
        self._next = (self._next + 1) % _SLOTS
        for keepalive in list(slot):
            keepalive.tick()
