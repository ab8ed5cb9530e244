"""The application the topic tests serve, in real processes (``geventws serve``, its
``--workers``, gunicorn): the connection API only.

A client connects with ``?topic=NAME`` (repeatable) to subscribe; the server then sends
``{"pid": ..., "topics": [...]}``. Commands, as JSON text messages:
``{"publish": TOPIC, "data": TEXT}`` publishes to every other subscriber and answers
``{"published": LOCAL_DELIVERIES}``; ``{"subscribe": TOPIC}`` / ``{"unsubscribe":
TOPIC}`` answer ``{"topics": [...]}``. Anything published reaches clients as the plain
text that was published (never starting with ``{``).
"""

from __future__ import annotations

import json
import os

from geventws import Connection, Request
from geventws.pubsub import BrokerUnavailable
from geventws.wsgi import WebSocketMiddleware


def handle(connection: Connection, request: Request) -> None:
    for topic in request.args.getlist("topic"):
        connection.subscribe(topic)
    connection.send(json.dumps({"pid": os.getpid(), "topics": sorted(connection.topics)}))
    for message in connection:
        command = json.loads(message)
        if "publish" in command:
            delivered = connection.publish(command["publish"], command["data"])
            connection.send(json.dumps({"published": delivered}))
        elif "subscribe" in command:
            try:
                connection.subscribe(command["subscribe"])
            except BrokerUnavailable:
                pass  # kept: restored when the broker is back
            connection.send(json.dumps({"topics": sorted(connection.topics)}))
        elif "unsubscribe" in command:
            connection.unsubscribe(command["unsubscribe"])
            connection.send(json.dumps({"topics": sorted(connection.topics)}))


def not_found(environ: dict, start_response: object) -> list[bytes]:  # type: ignore[type-arg]
    start_response("404 Not Found", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"not found\n"]


#: The same handler behind a WSGI server (gunicorn's GeventWebSocketWorker); the broker
#: comes from ``GEVENTWS_BROKER``.
app = WebSocketMiddleware(not_found, {"/ws": handle})
