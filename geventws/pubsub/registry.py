"""The topic registry: which subscribers (connections) listen to which topics.

One :class:`Topics` per server (or shared by several servers of a process): publishing
delivers to the local subscribers at once through a delivery callable (by default
:func:`geventws.broadcast`, which frames once, compresses once per setting and never
waits for a slow client) and then hands the message to the broker for the other
processes.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional, Union

from ..broadcast import broadcast
from .broker import Broker, BrokerUnavailable, broker_from_url

__all__ = ["Deliver", "Topics"]

#: Local delivery: ``deliver(subscribers, message, binary) -> deliveries``. It gets the
#: registry's *live* set and must not switch greenlets while iterating over it
#: (:func:`geventws.broadcast` doesn't); it must not block.
Deliver = Callable[[Any, Union[str, bytes], bool], int]


def _broadcast(subscribers: Any, message: Union[str, bytes], binary: bool) -> int:
    return broadcast(subscribers, message, binary)


class Topics:
    """A registry ``topic -> set of subscribers``, with a broker for other processes.

    ``broker`` is a :class:`~geventws.pubsub.Broker`, a URL for
    :func:`~geventws.pubsub.broker_from_url` (``"redis://host:6379/0"``), or ``None``
    for a :class:`~geventws.pubsub.LocalBroker`. The registry owns it: :meth:`close`
    closes it. ``deliver`` sends a message to a collection of subscribers (default
    :func:`geventws.broadcast`, for :class:`~geventws.Connection` subscribers).
    ``subscribe_timeout`` is how long :meth:`subscribe` waits for the broker by default.

    Subscribers are any hashable objects. Topics are non-empty strings.

    Concurrency: every method must be called from greenlets of one gevent hub (the
    server's), never from another OS thread; nothing here takes a lock, because nothing
    between a check and an update switches greenlets. From another thread, go through
    the hub (``hub.loop.run_callback_threadsafe``).

    The broker is started by :meth:`start`, or by the first :meth:`subscribe` or
    :meth:`publish`, in the process that uses it (after a ``fork``, not before).
    """

    def __init__(
        self,
        broker: Union[Broker, str, None] = None,
        *,
        deliver: Optional[Deliver] = None,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self.broker: Broker = broker if isinstance(broker, Broker) else broker_from_url(broker)
        self._deliver: Deliver = deliver if deliver is not None else _broadcast
        self.subscribe_timeout = subscribe_timeout
        self._subscribers: dict[str, set[Any]] = {}
        self._topics: dict[Any, set[str]] = {}
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the broker (idempotent)."""
        if not self._started:
            self._started = True
            self.broker.start(self._on_remote)

    def close(self, timeout: float = 5.0) -> None:
        """Close the broker (within ``timeout`` seconds) and forget every subscription.
        Idempotent. Afterwards :meth:`subscribe` raises
        :class:`~geventws.pubsub.BrokerUnavailable`; :meth:`publish` delivers to nobody."""
        self._closed = True
        self._subscribers.clear()
        self._topics.clear()
        self.broker.close(timeout)

    # -- subscriptions --------------------------------------------------------------

    def subscribe(self, subscriber: Hashable, topic: str, timeout: Optional[float] = None) -> None:
        """Subscribe ``subscriber`` to ``topic``; return once every message published
        afterwards, from this process or another, will reach it.

        The first local subscriber of a topic waits for the broker's confirmation (for
        Redis, its reply to ``SUBSCRIBE``); others subscribing meanwhile wait for the
        same one; later ones return at once. Subscribing twice is harmless.

        Raises :class:`~geventws.pubsub.BrokerUnavailable` when the broker can't confirm
        within ``timeout`` seconds (default :attr:`subscribe_timeout`), at once if the
        broker is known to be down. The subscription is *kept* all the same: local
        messages reach the subscriber, and the broker subscribes when it is back. Call
        :meth:`unsubscribe` to give it up. Cancelling the call (``gevent.Timeout``,
        ``kill()``) keeps it too. Raises :class:`ValueError` for a topic that isn't a
        non-empty string encodable as UTF-8, and ``BrokerUnavailable`` without
        subscribing once :meth:`close` was called.
        """
        _check_topic(topic)
        if self._closed:
            raise BrokerUnavailable("the topic registry is closed")
        self.start()
        subscribers = self._subscribers.get(topic)
        if subscribers is None:
            subscribers = self._subscribers[topic] = set()
        subscribers.add(subscriber)
        topics = self._topics.get(subscriber)
        if topics is None:
            topics = self._topics[subscriber] = set()
        topics.add(topic)
        self.broker.subscribe(topic, self.subscribe_timeout if timeout is None else timeout)

    def unsubscribe(self, subscriber: Hashable, topic: str) -> bool:
        """Remove ``subscriber`` from ``topic``; return whether it was subscribed.
        Never blocks; the broker unsubscribes when the last local subscriber leaves."""
        subscribers = self._subscribers.get(topic)
        if subscribers is None or subscriber not in subscribers:
            return False
        subscribers.discard(subscriber)
        topics = self._topics.get(subscriber)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._topics[subscriber]
        if not subscribers:
            del self._subscribers[topic]
            self.broker.unsubscribe(topic)
        return True

    def unsubscribe_all(self, subscriber: Hashable) -> None:
        """Remove ``subscriber`` from every topic (a closing connection). Never blocks."""
        for topic in list(self._topics.get(subscriber, ())):
            self.unsubscribe(subscriber, topic)

    def topics_of(self, subscriber: Hashable) -> frozenset[str]:
        """The topics ``subscriber`` is subscribed to."""
        return frozenset(self._topics.get(subscriber, ()))

    def subscribers(self, topic: str) -> frozenset[Any]:
        """The local subscribers of ``topic``."""
        return frozenset(self._subscribers.get(topic, ()))

    @property
    def topics(self) -> frozenset[str]:
        """The topics that have local subscribers."""
        return frozenset(self._subscribers)

    # -- publishing -----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        message: Union[str, bytes],
        binary: bool = False,
        exclude: Optional[Hashable] = None,
    ) -> int:
        """Deliver ``message`` to the local subscribers of ``topic`` (all but
        ``exclude``) at once, then hand it to the broker for the other processes;
        return the number of local deliveries.

        ``message`` is text (a ``str``, or UTF-8 ``bytes``) unless ``binary``. Never
        blocks: local delivery skips slow consumers, and the broker queues (bounded) or
        drops, counting what it drops. Raises :class:`ValueError` for text that isn't
        valid UTF-8 (nothing is sent) or a bad topic.
        """
        _check_topic(topic)
        self.start()
        subscribers = self._subscribers.get(topic)
        delivered = 0
        validated = False
        if subscribers:
            targets = subscribers
            if exclude is not None and exclude in subscribers:
                targets = subscribers - {exclude}
            if targets:
                delivered = self._deliver(targets, message, binary)
                validated = True  # the delivery checked the text
        if isinstance(message, str):
            data = message.encode("utf-8")  # ValueError for lone surrogates
        else:
            data = bytes(message)
            if not binary and not validated:
                data.decode("utf-8")  # UnicodeDecodeError is a ValueError
        self.broker.publish(topic, data, binary)
        return delivered

    def _on_remote(self, topic: str, data: bytes, binary: bool) -> None:
        """A message from another process: deliver it to this process's subscribers."""
        subscribers = self._subscribers.get(topic)
        if subscribers:
            self._deliver(subscribers, data, binary)

    # -- introspection --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The broker's :meth:`~geventws.pubsub.Broker.stats` plus ``topics`` (topics with
        local subscribers) and ``subscriptions`` (subscriber-topic pairs)."""
        stats = self.broker.stats()
        stats["topics"] = len(self._subscribers)
        stats["subscriptions"] = sum(len(s) for s in self._subscribers.values())
        return stats


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic is a non-empty str, not {topic!r}")
    topic.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
