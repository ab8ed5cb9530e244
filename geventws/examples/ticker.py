"""Pushing from elsewhere in the application: a background greenlet broadcasting to
every connected client.

    python -m geventws.examples.ticker      # then connect to ws://127.0.0.1:8000/

Any greenlet may send on any connection; :func:`geventws.broadcast` frames a message
once and never waits for a slow client, and ``server.connections`` is the live set of
connections. The handler itself only has to keep the connection open.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import gevent

import geventws


def handle(connection: geventws.Connection, request: geventws.Request) -> None:
    """Listeners only: keep reading (pings answered, close noticed) until they leave."""
    connection.accept()
    for _ in connection:
        pass


def tick(
    server: geventws.WebSocketServer, interval: float = 1.0, count: Optional[int] = None
) -> None:
    """Every ``interval`` seconds, send ``{"tick": n, "time": ...}`` to every client
    (``count`` ticks, or forever)."""
    n = 0
    while count is None or n < count:
        gevent.sleep(interval)
        n += 1
        geventws.broadcast(server.connections, json.dumps({"tick": n, "time": time.time()}))


def main(host: str = "127.0.0.1", port: int = 8000) -> None:
    server = geventws.WebSocketServer((host, port), handle)
    ticker = gevent.spawn(tick, server)
    try:
        server.serve_forever()
    finally:
        ticker.kill()


if __name__ == "__main__":
    main()
