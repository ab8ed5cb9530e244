"""Shared fixtures: servers in a thread, leak checks."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import pytest
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from .cli_runner import run_cli
from .utils import ServerThread, fd_count, wait_for


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start geventws servers for the test; on teardown stop them and check that no
    socket or greenlet leaked."""
    servers: list[ServerThread] = []
    gevent.sleep(0)  # this thread's hub and loop (their descriptors) exist before counting
    before = fd_count()

    def start(handler: Callable[..., Any], **options: Any) -> ServerThread:
        server = ServerThread(handler, **options).start()
        servers.append(server)
        return server

    yield start
    try:
        for server in servers:
            server.stop()
            assert server.leftover_greenlets == [], f"greenlets left: {server.leftover_greenlets}"
            assert server.server is not None and not getattr(server.server, "connections", ())
    finally:  # every server stopped and let go, even when a check above failed
        for server in servers:
            server.stop()
            server.release()
    assert wait_for(lambda: fd_count() <= before), (
        f"file descriptors leaked: {before} -> {fd_count()}"
    )


@pytest.fixture
def ws_server() -> Iterator[Callable[..., int]]:
    """Start websockets' threaded (sync) server, an independent peer, with a handler;
    return its port."""
    servers: list[Any] = []

    def start(handler: Callable[[ServerConnection], None], **kwargs: Any) -> int:
        server = ws_serve(handler, "127.0.0.1", 0, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.socket.getsockname()[1])

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Any]:
    """``cli("serve", ...)`` runs ``python -m geventws serve ...`` in ``tmp_path`` (see
    :func:`tests.cli_runner.run_cli`); killed at the end of the test."""
    yield from run_cli(tmp_path)
