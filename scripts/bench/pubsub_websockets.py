"""websockets' side of scripts/bench_pubsub.py: Redis pub/sub relayed to local clients,
the way websockets' docs suggest broadcasting across processes.

    python pubsub_websockets.py PORT REDIS_URL [uvloop]

One task per process subscribes to the Redis channel ``room`` (redis.asyncio) and hands
every message to ``websockets.asyncio.server.broadcast`` for the clients of this process
that listen. A client on ``/sub`` listens; a client on ``/pub`` has each of its messages
published to ``room`` with ``await redis.publish(...)`` (so this process's own listeners
get it back from Redis too, like every other process's). With ``uvloop``, the event
loop is uvloop's instead of asyncio's.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve

CHANNEL = "room"
LISTENERS: set[ServerConnection] = set()


async def relay(url: str) -> None:
    """Forward every message of the Redis channel to this process's listeners."""
    client: Any = aioredis.from_url(url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message["type"] == "message":
            broadcast(LISTENERS, message["data"])


async def main(port: int, url: str) -> None:
    publisher: Any = aioredis.from_url(url)

    async def handler(websocket: ServerConnection) -> None:
        assert websocket.request is not None
        if websocket.request.path == "/pub":
            async for message in websocket:
                await publisher.publish(CHANNEL, message)
        else:
            LISTENERS.add(websocket)
            try:
                await websocket.wait_closed()
            finally:
                LISTENERS.discard(websocket)

    relaying = asyncio.create_task(relay(url))
    async with serve(handler, "127.0.0.1", port, backlog=2048):
        await relaying  # runs until the process is stopped


if __name__ == "__main__":
    port, url = int(sys.argv[1]), sys.argv[2]
    if sys.argv[3:4] == ["uvloop"]:
        import uvloop

        uvloop.run(main(port, url))
    else:
        asyncio.run(main(port, url))
