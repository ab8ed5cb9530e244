"""The Redis broker: topics shared by processes through Redis pub/sub (redis-py).

Theory of operation
-------------------
A :class:`RedisBroker` holds a *session*: two connections to Redis, opened together and
lost together, and three greenlets (plus a supervisor that runs the sessions).

* The **subscriber** connection is subscribed to one channel per topic that has local
  subscribers (``prefix + topic``) and to nothing else. Its reader greenlet reads
  everything that arrives: messages (handed to the registry), the replies to
  ``SUBSCRIBE`` (which confirm subscriptions) and the replies to the ``PING`` it asks
  for after ``health_interval`` seconds of silence (no reply to that within another
  interval ends the session: a half-open TCP connection is found). Its only writer is
  the subscriptions greenlet, which brings Redis in line with the set of wanted topics
  whenever it changes (so :meth:`~RedisBroker.unsubscribe` never blocks, and quick
  changes coalesce), and sends the reader's ``PING``.
* The **publisher** connection is fed by a bounded FIFO queue: :meth:`publish` only
  appends (never blocks, never does I/O), and a writer greenlet sends what has
  accumulated as one pipeline of ``PUBLISH`` commands, then reads the replies. One
  queue and one connection keep every message of this process in publish order.

Confirmations: Redis answers the commands of one connection in order, so the broker
counts the ``SUBSCRIBE`` commands in flight per topic; a topic is confirmed when its
count drops to zero while it is still wanted (a quick subscribe, unsubscribe, subscribe
is confirmed by the *last* reply, not the first).

Losing Redis: any error on either connection ends the session. Both connections are
closed, queued messages are dropped (counted), confirmations are withdrawn, and one
WARNING is logged for the outage. The supervisor greenlet reconnects with exponential
backoff and jitter; a new session subscribes again to every topic wanted *at that
moment* (not a stale list), and once Redis confirmed them all the broker is healthy
again and one INFO line is logged. No exception leaves a background greenlet.

Sockets: the broker uses redis-py connection classes whose sockets come from
:mod:`gevent.socket` (and TLS from :mod:`gevent.ssl`), in
:mod:`geventws.pubsub.redis_connections`: it never blocks the hub, whether or not the
process is monkey-patched.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Optional

import gevent
import gevent.event
import redis.backoff
import redis.connection
import redis.exceptions

from .broker import Broker, BrokerUnavailable, RemoteHandler
from .redis_connections import connection_settings, redact

__all__ = ["RedisBroker"]

logger = logging.getLogger("geventws.pubsub")

#: Wire format of a message's payload: one byte (high nibble: format version 1, bit 0:
#: binary), the publishing broker's 8-byte random id, then the message itself.
_VERSION = 0x10
_VERSION_MASK = 0xF0
_BINARY = 0x01
_ORIGIN_SIZE = 8
_HEADER_SIZE = 1 + _ORIGIN_SIZE

#: What the writer sends as one pipeline at most.
_BATCH_MESSAGES = 512
_BATCH_BYTES = 1 << 20
#: Channels per SUBSCRIBE command.
_SUBSCRIBE_CHUNK = 1000


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the broker -------------------------------------------------------------------------


class _Session:
    """Two connections, from connect to loss; never reused."""

    __slots__ = (
        "broken",
        "ended",
        "greenlets",
        "healthy_reached",
        "ping",
        "publisher",
        "reason",
        "restoring",
        "subscriber",
    )

    def __init__(self, subscriber: Any, publisher: Any) -> None:
        self.subscriber = subscriber
        self.publisher = publisher
        self.broken = False
        self.reason = ""
        self.ended = gevent.event.Event()
        self.restoring: set[str] = set()  # wanted at the start, not confirmed yet
        self.healthy_reached = False
        self.ping = False  # the reader asks the subscriptions writer for a PING
        self.greenlets: list[Any] = []


class RedisBroker(Broker):
    """Topics shared by processes through Redis pub/sub (needs the ``redis`` extra).

    ``url`` is redis-py's: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` for TLS (``?ssl_ca_certs=...`` and the other ``ssl_*`` options of
    redis-py, OCSP excepted), ``unix:///path/redis.sock``. Keyword ``options`` go to
    redis-py's connection like the URL's query (``ssl_ca_data=...``,
    ``socket_keepalive=False``...). Redis pub/sub ignores the database number: processes
    share channels across databases, so applications sharing one Redis need distinct
    ``prefix`` es.

    ``prefix``
        Prepended to each topic to make its channel name (default ``"geventws:"``).
    ``timeout``
        Seconds to connect, and to wait for Redis on an open connection (default 5;
        the URL's ``socket_timeout`` and ``socket_connect_timeout`` take precedence).
    ``health_interval``
        Seconds of silence on the subscriber connection before it is pinged; no answer
        within as long again ends the session (default 5).
    ``max_pending``, ``max_pending_bytes``
        Bound of the queue of messages waiting to be published (default 10,000 messages
        and 16 MiB); beyond it :meth:`publish` drops and counts.
    ``backoff_base``, ``backoff_max``
        Reconnection delays: exponential from ``backoff_base`` (0.1 s) up to
        ``backoff_max`` (10 s), with equal jitter (half fixed, half random).

    Raises :class:`ValueError` for a URL or option that redis-py does not accept.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "geventws:",
        timeout: float = 5.0,
        health_interval: float = 5.0,
        max_pending: int = 10_000,
        max_pending_bytes: int = 16 * 2**20,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        **options: Any,
    ) -> None:
        self._connection_class, self._kwargs = connection_settings(url, timeout, options)
        #: The URL without credentials, as logged.
        self.url = redact(url)
        self._prefix = prefix.encode("utf-8")
        self._timeout = timeout
        self._health_interval = health_interval
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._backoff = redis.backoff.EqualJitterBackoff(cap=backoff_max, base=backoff_base)

        self._on_message: Optional[RemoteHandler] = None
        self._origin = b""
        self._headers = (b"", b"")
        # topic -> set once Redis confirmed it on the current session
        self._wanted: dict[str, Any] = {}
        # topic -> SUBSCRIBE commands sent on the current session and not answered yet
        self._inflight: dict[str, int] = {}
        # topics whose last command on the current session was SUBSCRIBE
        self._subscribed: set[str] = set()
        # topics wanted or given up since the subscriptions writer last looked
        self._dirty: set[str] = set()
        self._commands = gevent.event.Event()  # wakes the subscriptions writer
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._pending_bytes = 0
        self._sending = 0  # messages of the pipeline being written
        self._wakeup = gevent.event.Event()
        self._stopping = gevent.event.Event()
        self._supervisor: Any = None
        self._up = False
        self._lost = False
        self._connected_once = False
        self._closed = False
        self._last_error: Optional[str] = None
        self._counters = dict.fromkeys(
            (
                "published",
                "dropped",
                "overflows",
                "received",
                "echoes",
                "malformed",
                "delivery_errors",
                "outages",
                "recoveries",
            ),
            0,
        )

    # -- Broker -----------------------------------------------------------------------

    def start(self, on_message: RemoteHandler) -> None:
        """Start connecting (in the background) and deliver other processes' messages
        to ``on_message``. Call once, in the process that uses the broker: the origin
        id that tells its own messages apart is drawn here."""
        if self._closed:
            raise BrokerUnavailable("the broker is closed")
        if self._supervisor is not None:
            raise RuntimeError("the broker is already started")
        self._on_message = on_message
        self._origin = os.urandom(_ORIGIN_SIZE)
        self._headers = (
            bytes([_VERSION]) + self._origin,
            bytes([_VERSION | _BINARY]) + self._origin,
        )
        self._supervisor = gevent.spawn(self._supervise)
        self._supervisor.name = f"geventws-redis-broker {self.url}"

    def subscribe(self, topic: str, timeout: float) -> None:
        """Return once Redis confirmed the topic's channel (at once if it already did).

        Raises :class:`BrokerUnavailable` after ``timeout`` seconds, at once while Redis
        is known to be down, or when the broker is closed (meanwhile). The topic stays
        wanted and is subscribed when Redis is back (until :meth:`unsubscribe`).
        Raises :class:`RuntimeError` before :meth:`start`.
        """
        if self._closed:
            raise BrokerUnavailable("the broker is closed")
        if self._supervisor is None:
            raise RuntimeError("start() the broker first")
        event = self._wanted.get(topic)
        if event is None:
            event = self._wanted[topic] = gevent.event.Event()
            self._changed(topic)
        if event.is_set():
            return
        if self._lost:
            raise BrokerUnavailable(
                f"Redis ({self.url}) is unreachable ({self._last_error}); the topic "
                f"{topic!r} will be subscribed when it is back"
            )
        if not event.wait(timeout) or self._closed:
            if self._closed:
                raise BrokerUnavailable("the broker is closed")
            raise BrokerUnavailable(
                f"Redis ({self.url}) did not confirm the topic {topic!r} within "
                f"{timeout} s; it will be subscribed when it can"
            )

    def unsubscribe(self, topic: str) -> None:
        """Forget ``topic`` (waiters on its confirmation return); the subscriptions
        writer unsubscribes its channel. Never blocks."""
        event = self._wanted.pop(topic, None)
        if event is None:
            return
        event.set()
        self._changed(topic)

    def publish(self, topic: str, data: bytes, binary: bool) -> None:
        """Queue ``data`` for the publisher connection; never blocks. Dropped (and
        counted) while Redis is down, when the queue is full, or once closed."""
        counters = self._counters
        if self._lost or self._closed or self._supervisor is None:
            counters["dropped"] += 1
            return
        size = len(data) + _HEADER_SIZE
        if (
            len(self._queue) >= self._max_pending
            or self._pending_bytes + size > self._max_pending_bytes
        ):
            counters["dropped"] += 1
            counters["overflows"] += 1
            return
        self._queue.append((self._prefix + topic.encode("utf-8"), self._headers[binary] + data))
        self._pending_bytes += size
        self._wakeup.set()

    @property
    def healthy(self) -> bool:
        """Connected, with every wanted topic confirmed by Redis: messages cross
        processes. False before the first connection, during an outage, once closed."""
        return self._up and not self._closed

    def stats(self) -> dict[str, Any]:
        """A new dict: ``healthy``; ``published`` (acknowledged by Redis),
        ``dropped`` (never sent or lost with a connection: outage, full queue,
        closed), ``overflows`` (the part of ``dropped`` due to a full queue),
        ``pending`` and ``pending_bytes`` (queued now); ``received`` (messages from
        other processes), ``echoes`` (this process's own, skipped), ``malformed``
        (not in the wire format), ``delivery_errors`` (the registry raised, such as
        invalid UTF-8 text); ``outages`` (losses of Redis), ``recoveries`` (returns);
        ``topics`` (channels wanted), ``last_error`` (str or None)."""
        stats: dict[str, Any] = {"healthy": self.healthy}
        stats.update(self._counters)
        stats["pending"] = len(self._queue)
        stats["pending_bytes"] = self._pending_bytes
        stats["topics"] = len(self._wanted)
        stats["last_error"] = self._last_error
        return stats

    def close(self, timeout: float = 5.0) -> None:
        """Stop the greenlets and close both connections, within ``timeout`` seconds.
        Waiting subscribers get :class:`BrokerUnavailable`; queued messages are
        dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._up = False
        self._stopping.set()
        for event in self._wanted.values():
            event.set()  # waiters see the broker closed
        self._wanted.clear()
        self._commands.set()
        if self._supervisor is not None:
            self._supervisor.kill(block=True, timeout=timeout)
        self._drop_queue()

    # -- the subscriptions writer (subscriber connection) -------------------------------

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode("utf-8")

    def _changed(self, topic: str) -> None:
        """``topic`` was wanted or given up: the subscriptions writer brings Redis in line."""
        self._dirty.add(topic)
        self._commands.set()

    def _subscriptions_loop(self, session: _Session) -> None:
        """The only writer of the subscriber connection: brings Redis' subscriptions in
        line with the wanted topics (changes made meanwhile are coalesced: a topic given
        up and wanted again before this runs is left alone), and sends the reader's
        PINGs. A write that blocks (Redis not reading) blocks nobody else."""
        conn = session.subscriber
        try:
            while not session.broken:
                if not self._dirty and not session.ping:
                    self._commands.clear()
                    self._commands.wait(self._health_interval)
                    continue
                dirty, self._dirty = self._dirty, set()
                subscribe: list[str] = []
                unsubscribe: list[str] = []
                for topic in dirty:
                    if topic in self._wanted:
                        if topic not in self._subscribed:
                            subscribe.append(topic)
                        elif topic not in self._inflight:  # confirmed in this session
                            self._wanted[topic].set()
                    else:
                        session.restoring.discard(topic)
                        if topic in self._subscribed:
                            unsubscribe.append(topic)
                commands: list[tuple[Any, ...]] = []
                if unsubscribe:
                    self._subscribed.difference_update(unsubscribe)
                    commands.append(("UNSUBSCRIBE", *map(self._channel, unsubscribe)))
                for start in range(0, len(subscribe), _SUBSCRIBE_CHUNK):
                    chunk = subscribe[start : start + _SUBSCRIBE_CHUNK]
                    for topic in chunk:
                        self._inflight[topic] = self._inflight.get(topic, 0) + 1
                    self._subscribed.update(chunk)
                    commands.append(("SUBSCRIBE", *map(self._channel, chunk)))
                if session.ping:
                    session.ping = False
                    commands.append(("PING",))
                self._check_restored(session)
                if commands:
                    conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except Exception as exc:
            self._break(session, exc)
        finally:
            self._break(session, None)

    def _check_restored(self, session: _Session) -> None:
        """Healthy once every topic wanted when the session started is confirmed (or
        given up)."""
        if not session.restoring and not session.healthy_reached and not session.broken:
            self._mark_up(session)

    # -- the session ----------------------------------------------------------------------

    def _new_connection(self, role: str) -> Any:
        kwargs = dict(self._kwargs)
        kwargs.setdefault("client_name", f"geventws-{role}")
        return self._connection_class(**kwargs)

    def _supervise(self) -> None:
        """Sessions one after the other, with backoff between failures, until closed."""
        failures = 0
        while not self._closed:
            session = _Session(
                self._new_connection("subscriber"), self._new_connection("publisher")
            )
            try:
                self._run(session)
            except Exception as exc:  # whatever fails ends the session, never the broker
                self._break(session, exc)
            finally:
                self._end(session)
            if self._closed:
                break
            failures = 0 if session.healthy_reached else failures + 1
            delay = self._backoff.compute(failures)
            logger.debug("Redis broker %s: reconnecting in %.2f s", self.url, delay)
            self._stopping.wait(delay)

    def _run(self, session: _Session) -> None:
        """Connect, start the greenlets (the subscriptions writer subscribes every
        topic wanted now), and return when the session ends."""
        session.subscriber.connect()
        session.publisher.connect()
        session.restoring.update(self._wanted)
        self._dirty = set(self._wanted)
        session.greenlets = [
            gevent.spawn(self._read_loop, session),
            gevent.spawn(self._subscriptions_loop, session),
            gevent.spawn(self._write_loop, session),
        ]
        self._check_restored(session)  # nothing to restore: healthy now
        # Ends: the reader finds any loss within 2 x health_interval; close() kills us.
        session.ended.wait()

    def _break(self, session: _Session, exc: Optional[BaseException]) -> None:
        """Mark ``session`` as over (with the first reason given). Never switches."""
        if not session.broken:
            session.broken = True
            session.reason = _describe(exc) if exc is not None else "connection ended"
        session.ended.set()

    def _end(self, session: _Session) -> None:
        """Tear ``session`` down: withdraw confirmations, log the loss, stop its
        greenlets, close its connections, drop the queue. Never raises."""
        self._break(session, None)
        self._up = False
        self._inflight.clear()
        self._subscribed.clear()
        self._dirty.clear()
        if not self._closed:
            for event in self._wanted.values():
                event.clear()
            self._lose(session.reason)
        gevent.killall(session.greenlets, block=True, timeout=self._timeout)
        for conn in (session.subscriber, session.publisher):
            try:
                conn.disconnect()
            except Exception:  # closing never raises out of a shutdown path
                logger.debug("Redis broker %s: error closing a connection", self.url, exc_info=True)
        self._drop_queue()

    def _lose(self, reason: str) -> None:
        self._up = False
        self._last_error = reason
        if self._lost:
            logger.debug("Redis broker %s: still unreachable: %s", self.url, reason)
            return
        self._lost = True
        self._counters["outages"] += 1
        logger.warning(
            "Redis broker %s %s (%s): messages don't cross processes until it is back; "
            "reconnecting with backoff",
            self.url,
            "lost" if self._connected_once else "unreachable",
            reason,
        )

    def _mark_up(self, session: _Session) -> None:
        self._up = True
        self._connected_once = True
        session.healthy_reached = True
        if self._lost:
            self._lost = False
            self._counters["recoveries"] += 1
            logger.info(
                "Redis broker %s is back: %d topic(s) subscribed again", self.url, len(self._wanted)
            )
        else:
            logger.debug("Redis broker %s connected", self.url)

    def _drop_queue(self) -> None:
        self._counters["dropped"] += len(self._queue)
        self._queue.clear()
        self._pending_bytes = 0

    # -- the reader (subscriber connection) ------------------------------------------------

    def _read_loop(self, session: _Session) -> None:
        conn = session.subscriber
        awaiting_pong = False
        try:
            while not session.broken:
                if not conn.can_read(timeout=self._health_interval):
                    if awaiting_pong:
                        raise TimeoutError(f"no answer to PING within {self._health_interval} s")
                    awaiting_pong = True
                    session.ping = True
                    self._commands.set()
                    continue
                reply = conn.read_response()
                awaiting_pong = False
                if type(reply) is list and len(reply) == 3:
                    kind = reply[0]
                    if kind == b"message":
                        self._on_pubsub_message(reply[1], reply[2])
                    elif kind == b"subscribe":
                        self._on_subscribed(session, reply[1])
                # Anything else (unsubscribe replies, pongs) only proves liveness.
        except Exception as exc:
            self._break(session, exc)
        finally:
            self._break(session, None)

    def _on_subscribed(self, session: _Session, channel: bytes) -> None:
        topic = channel[len(self._prefix) :].decode("utf-8", "surrogateescape")
        left = self._inflight.get(topic, 0) - 1
        if left > 0:
            self._inflight[topic] = left
            return
        self._inflight.pop(topic, None)
        event = self._wanted.get(topic)
        if event is not None:
            event.set()
        if session.restoring:
            session.restoring.discard(topic)
            self._check_restored(session)

    def _on_pubsub_message(self, channel: bytes, payload: bytes) -> None:
        counters = self._counters
        if (
            len(payload) < _HEADER_SIZE
            or payload[0] & _VERSION_MASK != _VERSION
            or not channel.startswith(self._prefix)
        ):
            counters["malformed"] += 1
            return
        if payload[1:_HEADER_SIZE] == self._origin:
            counters["echoes"] += 1  # delivered locally when published
            return
        try:
            topic = channel[len(self._prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            counters["malformed"] += 1
            return
        counters["received"] += 1
        assert self._on_message is not None
        try:
            self._on_message(topic, payload[_HEADER_SIZE:], bool(payload[0] & _BINARY))
        except Exception:  # a bad message must not end the session
            counters["delivery_errors"] += 1
            logger.debug("Redis broker %s: delivery failed", self.url, exc_info=True)

    # -- the writer (publisher connection) --------------------------------------------------

    def _write_loop(self, session: _Session) -> None:
        conn = session.publisher
        queue = self._queue
        counters = self._counters
        try:
            while not session.broken:
                if not queue:
                    self._wakeup.clear()
                    self._wakeup.wait(self._health_interval)
                    continue
                batch: list[tuple[str, bytes, bytes]] = []
                size = 0
                while queue and len(batch) < _BATCH_MESSAGES and size < _BATCH_BYTES:
                    channel, payload = queue.popleft()
                    batch.append(("PUBLISH", channel, payload))
                    size += len(payload)
                self._pending_bytes -= size
                self._sending = len(batch)
                conn.send_packed_command(conn.pack_commands(batch), check_health=False)
                for _ in batch:
                    conn.read_response()
                    self._sending -= 1
                    counters["published"] += 1
        except Exception as exc:
            self._break(session, exc)
        finally:
            counters["dropped"] += self._sending  # maybe published: at most once
            self._sending = 0
            self._break(session, None)
