"""Shared fixtures: servers in a thread, leak checks."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from .utils import ServerThread, fd_count, wait_for


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start geventws servers for the test; on teardown stop them and check that no
    socket or greenlet leaked."""
    servers: list[ServerThread] = []
    before = fd_count()

    def start(handler: Callable[..., Any], **options: Any) -> ServerThread:
        server = ServerThread(handler, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        assert server.leftover_greenlets == [], f"greenlets left: {server.leftover_greenlets}"
        assert server.server is not None and not server.server.connections
    assert wait_for(lambda: fd_count() <= before), (
        f"file descriptors leaked: {before} -> {fd_count()}"
    )
