"""Minimal Django settings for the Channels peer of scripts/bench_pubsub.py (no database,
no installed apps: the consumers need only the channel layer).

``BENCH_CHANNEL_LAYER`` picks the layer: ``core`` for
``channels_redis.core.RedisChannelLayer`` (the default one of Channels' tutorial),
``pubsub`` for ``channels_redis.pubsub.RedisPubSubChannelLayer``; ``BENCH_REDIS_URL`` is
the Redis it uses. Every other option keeps channels_redis' default.
"""

from __future__ import annotations

import os

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True

_LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": _LAYERS[os.environ.get("BENCH_CHANNEL_LAYER", "core")],
        "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
