"""geventws' side of scripts/bench_pubsub.py: topics, the way the pub/sub docs write it.

    cd scripts/bench && geventws serve pubsub_geventws:handle --port P --broker redis://...

A client on ``/sub`` subscribes to the topic ``room`` and only listens; a client on
``/pub`` publishes every message it sends to ``room`` with ``connection.publish``
(every subscriber, in this process and, through the broker, in the others). Both paths
are what the other peers of the benchmark serve too (pubsub_channels.py,
pubsub_websockets.py).
"""

from __future__ import annotations

from geventws import Connection, Request

TOPIC = "room"


def handle(connection: Connection, request: Request) -> None:
    if request.path == "/pub":
        for message in connection:
            connection.publish(TOPIC, message, binary=isinstance(message, bytes))
    else:
        connection.subscribe(TOPIC)
        for _ in connection:
            pass  # subscribers only listen
