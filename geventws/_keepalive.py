"""Pings and pongs of a connection: the application's ``ping()`` and the keepalive.

The keepalive is two loop timers and no greenlet while idle: every ``interval`` seconds
a ping is *queued* (in the loop callback itself: queueing never blocks) and the
``timeout`` deadline starts at that moment, not when the ping is finally written. So a
peer that stopped reading, behind which our own sends are blocked, is still closed with
1011 after ``timeout`` (the blocked send then raises). A pong acknowledges its ping and
every earlier one still waiting (RFC 6455 §5.5.3 lets peers answer only the last).
While back-pressure pauses reading, the pong may sit unread in the socket: the deadline
is then extended rather than failing a peer we chose not to read.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import gevent
from gevent.event import AsyncResult

from ._writer import Writer
from .core.protocol import Protocol
from .exceptions import InvalidState

__all__ = ["Keepalive"]


class Keepalive:
    """The pings of one connection over ``protocol`` and ``writer``.

    ``interval`` and ``timeout`` configure the keepalive (``None`` turns either off);
    ``on_expired()`` runs in a new greenlet when a keepalive pong is late;
    ``is_paused()`` says whether back-pressure paused reading.
    """

    __slots__ = (
        "_deadline",
        "_is_paused",
        "_on_expired",
        "_pings",
        "_protocol",
        "_timer",
        "_waiting",
        "_writer",
        "interval",
        "timeout",
    )

    def __init__(
        self,
        protocol: Protocol,
        writer: Writer,
        *,
        interval: Optional[float],
        timeout: Optional[float],
        on_expired: Callable[[], None],
        is_paused: Callable[[], bool],
    ) -> None:
        self._protocol = protocol
        self._writer = writer
        self.interval = interval
        self.timeout = timeout
        self._on_expired = on_expired
        self._is_paused = is_paused
        self._pings: Optional[dict[bytes, tuple[AsyncResult, float]]] = None
        self._timer: Any = None
        self._deadline: Any = None
        self._waiting: Optional[bytes] = None  # the keepalive ping awaiting its pong

    def start(self) -> None:
        """Start the periodic ping, if configured."""
        if self.interval:
            loop = gevent.get_hub().loop
            self._timer = loop.timer(self.interval, self.interval, ref=False)
            self._timer.start(self._tick)

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

    def _tick(self) -> None:
        # A loop callback every ``interval``: queue a ping unless one is still waiting;
        # the deadline starts now, while the ping is queued.
        if self._waiting is not None:
            return
        try:
            self._waiting, _ = self._send(None)
        except InvalidState:
            return
        if self.timeout:
            if self._deadline is None:
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
            if payload == data:
                break

    def _expired(self) -> None:
        # A loop callback: no pong within ``timeout`` of queueing the ping.
        if self._waiting is None:
            return
        if self._is_paused():
            # Paused by back-pressure: the pong may be waiting in the socket, unread.
            self._deadline.start(self._expired)
            return
        gevent.spawn_raw(self._on_expired)

    def stop(self) -> None:
        """Stop the timers; pings still waiting raise the connection's
        :meth:`~geventws.core.protocol.Protocol.closed_exception`."""
        for timer in (self._timer, self._deadline):
            if timer is not None:
                timer.stop()
        pings = self._pings
        if pings:
            closed = self._protocol.closed_exception()
            for result, _ in pings.values():
                result.set_exception(closed)
            pings.clear()
