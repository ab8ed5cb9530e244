"""Broadcast servers for scripts/bench_broadcast.py.

    python broadcast_app.py geventws|websockets PORT [deflate]

Each keeps the set of connected clients; when a client sends ``go N``, the server
broadcasts N 64-byte messages to every client, yielding between two broadcasts (as a
ticker greenlet or task would). With ``deflate``, the messages are 1 KiB of JSON-like
text and both servers negotiate permessage-deflate with their default settings:
geventws compresses each message once for all clients, websockets once per client.
"""

from __future__ import annotations

import json
import sys

DEFLATE = sys.argv[3:4] == ["deflate"]
PAYLOAD = (
    json.dumps([{"id": i, "user": f"user{i % 50}", "value": i * 37 % 1000} for i in range(30)])[
        :1024
    ]
    if DEFLATE
    else "x" * 64
)


def run_geventws(port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    import gevent

    import geventws

    clients: set[geventws.Connection] = set()

    def handle(connection: geventws.Connection, request: geventws.Request) -> None:
        connection.accept()
        clients.add(connection)
        try:
            for message in connection:
                if isinstance(message, str) and message.startswith("go"):
                    for _ in range(int(message.split()[1])):
                        geventws.broadcast(clients, PAYLOAD)
                        gevent.sleep(0)
        finally:
            clients.discard(connection)

    geventws.serve(
        handle,
        "127.0.0.1",
        port,
        ping_interval=None,
        backlog=2048,
        compression="deflate" if DEFLATE else None,
    )


def run_websockets(port: int) -> None:
    import asyncio

    from websockets.asyncio.server import broadcast, serve

    clients: set = set()

    async def handle(ws) -> None:  # type: ignore[no-untyped-def]
        clients.add(ws)
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("go"):
                    for _ in range(int(message.split()[1])):
                        broadcast(clients, PAYLOAD)
                        await asyncio.sleep(0)
        finally:
            clients.discard(ws)

    async def main() -> None:
        async with serve(
            handle,
            "127.0.0.1",
            port,
            compression="deflate" if DEFLATE else None,
            ping_interval=None,
            backlog=2048,
        ):
            await asyncio.Future()

    asyncio.run(main())


if __name__ == "__main__":
    {"geventws": run_geventws, "websockets": run_websockets}[sys.argv[1]](int(sys.argv[2]))
