"""The server side of the soak test (scripts/soak): one handler, four paths.

    geventws serve soak_app:handle   (with scripts/ on PYTHONPATH)

* ``/echo``: every message comes back as it came.
* ``/subscribe``: the connection subscribes to the topic ``soak`` (before the handshake
  is answered, so that a client that sees its connection open misses nothing published
  afterwards), then only reads (to notice its close and answer pings).
* ``/publish``: each message is published to ``soak`` through a
  :class:`geventws.pubsub.Topics` registry (the in-process broker: local delivery by
  :func:`geventws.broadcast`, which frames once and skips slow consumers), and
  acknowledged with ``ack N`` (how many subscribers it was queued to).
* ``/stats``: one JSON message with the server's live greenlets and objects tracked by
  the garbage collector (after a collection), handlers running per path, subscribers, publish counters and the close codes handlers saw, then the
  connection closes. The soak counts descriptors and memory from ``/proc`` itself.

Anything else is refused with 404.
"""

from __future__ import annotations

import collections
import gc
import json
from typing import Any

import greenlet

from geventws import Connection, Request
from geventws.pubsub import Topics

TOPIC = "soak"

topics = Topics()
#: Handlers running, per path.
running: collections.Counter[str] = collections.Counter()
#: The close code each finished handler saw (``open`` when still open at its end).
close_codes: collections.Counter[str] = collections.Counter()
#: Messages published, deliveries queued, and subscribers a message was not queued to
#: (slow consumers skipped, or connections opening or closing).
counters: collections.Counter[str] = collections.Counter()


def handle(connection: Connection, request: Request) -> None:
    """Dispatch on the path; count the handler while it runs."""
    serve = ROUTES.get(request.path)
    if serve is None:
        connection.reject(404, "no such path\n")
        return
    running[request.path] += 1
    try:
        serve(connection)
    finally:
        running[request.path] -= 1
        code = connection.close_code
        close_codes["open" if code is None else str(code)] += 1


def _echo(connection: Connection) -> None:
    for message in connection:
        connection.send(message, binary=isinstance(message, bytes))


def _subscribe(connection: Connection) -> None:
    topics.subscribe(connection, TOPIC)
    try:
        connection.accept()
        for _ in connection:
            pass
    finally:
        topics.unsubscribe_all(connection)


def _publish(connection: Connection) -> None:
    for message in connection:
        expected = len(topics.subscribers(TOPIC))
        delivered = topics.publish(TOPIC, message, binary=isinstance(message, bytes))
        counters["published"] += 1
        counters["delivered"] += delivered
        counters["not_delivered"] += max(0, expected - delivered)
        connection.send(f"ack {delivered}")


def live_greenlets() -> int:
    """Greenlets alive in this process (the hub's, raw ones included)."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def _stats(connection: Connection) -> None:
    collected = gc.collect()
    report: dict[str, Any] = {
        "collected": collected,
        "greenlets": live_greenlets(),
        "objects": len(gc.get_objects()),
        "running": {path: count for path, count in running.items() if count},
        "subscribers": len(topics.subscribers(TOPIC)),
        "counters": dict(counters),
        "close_codes": dict(close_codes),
    }
    connection.send(json.dumps(report))


ROUTES = {"/echo": _echo, "/subscribe": _subscribe, "/publish": _publish, "/stats": _stats}
