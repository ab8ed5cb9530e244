"""The broker interface, the in-process broker, and :func:`broker_from_url`.

A broker carries a process's published messages to the *other* processes and brings
theirs back; the registry (:class:`~geventws.pubsub.Topics`) does every local delivery
itself. A broker serves one registry, in one gevent hub (see :class:`Broker`).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

from ..exceptions import WebSocketError

__all__ = ["Broker", "BrokerUnavailable", "LocalBroker", "RemoteHandler", "broker_from_url"]

#: What a broker calls for each message from another process: ``(topic, data, binary)``.
#: It is called in the broker's own greenlet and must not block.
RemoteHandler = Callable[[str, bytes, bool], None]


class BrokerUnavailable(WebSocketError):
    """The broker could not confirm a subscription in time (or is closed).

    The local part of the subscription is kept: local publishes reach the subscriber
    now, and messages from other processes once the broker is back.
    """


class Broker(abc.ABC):
    """Carries messages between the processes that share topics.

    Contract, for every implementation:

    * :meth:`start` is called once, in the process and gevent hub that use the broker
      (after any ``fork``), before anything else.
    * :meth:`subscribe` is called for *every* local subscription; it returns at once
      when the topic is already confirmed and otherwise waits for the one confirmation
      in flight (several greenlets never cause several subscriptions).
      :meth:`unsubscribe` is called when a topic's last local subscriber leaves.
    * :meth:`publish` never blocks and never raises for a broker failure: what can't be
      sent is counted in :meth:`stats`.
    * All methods are called from greenlets of one hub, never from other threads.
    """

    @abc.abstractmethod
    def start(self, on_message: RemoteHandler) -> None:
        """Start the broker; ``on_message`` receives messages from other processes."""

    @abc.abstractmethod
    def subscribe(self, topic: str, timeout: float) -> None:
        """Return once messages published to ``topic`` by any process from now on will
        reach ``on_message``.

        Raises :class:`BrokerUnavailable` if that can't be confirmed within ``timeout``
        seconds; the broker keeps the topic and subscribes as soon as it can.
        """

    @abc.abstractmethod
    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (no local subscriber is left). Never blocks."""

    @abc.abstractmethod
    def publish(self, topic: str, data: bytes, binary: bool) -> None:
        """Hand ``data`` to the other processes. Never blocks, never raises for a broker
        failure (counted instead)."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether messages currently cross processes."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counters and state, as a new dict (keys documented by each broker)."""

    @abc.abstractmethod
    def close(self, timeout: float = 5.0) -> None:
        """Stop the broker's greenlets and close its connections, within ``timeout``
        seconds. Idempotent; afterwards :meth:`subscribe` raises
        :class:`BrokerUnavailable` and :meth:`publish` drops."""


class LocalBroker(Broker):
    """The in-process broker (the default): nothing crosses processes.

    Subscriptions are confirmed at once and ``publish`` has nothing to do (the registry
    delivered locally already). Always healthy until closed. ``stats()`` has
    ``healthy`` and ``closed``.
    """

    def __init__(self) -> None:
        self._closed = False

    def start(self, on_message: RemoteHandler) -> None:
        """Nothing to start."""

    def subscribe(self, topic: str, timeout: float) -> None:
        """Confirmed at once; raises :class:`BrokerUnavailable` once closed."""
        if self._closed:
            raise BrokerUnavailable("the broker is closed")

    def unsubscribe(self, topic: str) -> None:
        """Nothing to do."""

    def publish(self, topic: str, data: bytes, binary: bool) -> None:
        """Nothing to do: there are no other processes."""

    @property
    def healthy(self) -> bool:
        """True until closed."""
        return not self._closed

    def stats(self) -> dict[str, Any]:
        """``{"healthy": bool, "closed": bool}``."""
        return {"healthy": self.healthy, "closed": self._closed}

    def close(self, timeout: float = 5.0) -> None:
        """Mark the broker closed."""
        self._closed = True


def broker_from_url(url: Optional[str], **options: Any) -> Broker:
    """The broker a URL names: ``None``, ``""`` or ``"local"`` for a
    :class:`LocalBroker`; ``redis://``, ``rediss://`` or ``unix://`` for a
    :class:`~geventws.pubsub.redis.RedisBroker` (``options`` go to it; needs the
    ``redis`` extra). Raises :class:`ValueError` for anything else, and
    :class:`ImportError` when redis-py is missing.
    """
    if url is None or url in ("", "local"):
        if options:
            raise ValueError(f"the local broker takes no options: {sorted(options)}")
        return LocalBroker()
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        # Imported here: redis-py is an optional dependency.
        from .redis import RedisBroker  # noqa: PLC0415

        return RedisBroker(url, **options)
    raise ValueError(f"unknown broker URL {url!r}: expected redis://, rediss://, unix:// or local")
