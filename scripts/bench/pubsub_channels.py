"""Django Channels' side of scripts/bench_pubsub.py, the way Channels' tutorial writes a
chat room: AsyncWebsocketConsumers that join a group and ``group_send`` to it, through
channels_redis (pubsub_django_settings.py picks the layer).

    cd scripts/bench && BENCH_CHANNEL_LAYER=core|pubsub BENCH_REDIS_URL=redis://... \\
        uvicorn pubsub_channels:application --port P

A client on ``/sub`` joins the group ``room`` (``group_add`` in ``connect``, before
``accept``, as in the tutorial) and only listens; a client on ``/pub`` sends each message
to the group with ``group_send``; each consumer's handler for the event sends the text
on. Two departures from the tutorial, the same for every peer of the benchmark: the
text is relayed as it is (the tutorial wraps it in JSON both ways), and there is no
``AuthMiddlewareStack`` (it needs sessions and a database).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pubsub_django_settings")

from django.core.asgi import get_asgi_application

# Set Django up before importing anything that touches models or settings, as
# Channels' docs do.
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "room"


class SubscriberConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Joins the group, then sends every event of the group to its client."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


class PublisherConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Sends every text message of its client to the group."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(GROUP, {"type": "room.message", "text": text_data})


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [
                path("sub", SubscriberConsumer.as_asgi()),
                path("pub", PublisherConsumer.as_asgi()),
            ]
        ),
    }
)
