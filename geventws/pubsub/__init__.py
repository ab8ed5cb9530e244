"""Topics shared by connections, and by processes through a broker.

:class:`Topics` is the per-server registry ``topic -> subscribers``; a
:class:`Broker` carries messages to the other processes: :class:`LocalBroker` (the
default: none) or :class:`~geventws.pubsub.redis.RedisBroker` (Redis pub/sub, with the
``redis`` extra; imported from :mod:`geventws.pubsub.redis` so that this package doesn't
need redis-py). See the documentation's "Topics and brokers" page.
"""

from __future__ import annotations

from .broker import Broker, BrokerUnavailable, LocalBroker, RemoteHandler, broker_from_url
from .registry import Deliver, Topics

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Deliver",
    "LocalBroker",
    "RemoteHandler",
    "Topics",
    "broker_from_url",
]
