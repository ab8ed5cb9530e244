"""The Python work of one broadcast delivery, without the system calls.

    python broadcast_cost.py [deflate]     (run by scripts/bench_broadcast_cost.py)

Serves 1,000 WebSocket connections in this process (their clients are plain sockets
of the same process that completed the upgrade and then never read), replaces the batch
of non-blocking sends with one that sends nothing, then times ``geventws.broadcast()``
to all of them, each broadcast followed by the end of the loop's turn (where the batch
is written): process CPU time per delivery, in nanoseconds, the best of five runs of
300 broadcasts. With ``deflate`` the clients negotiate permessage-deflate and
the message is 1 KiB of text (compressed once per broadcast), otherwise 64 bytes.

What is left is the per-client Python of a broadcast: choosing the frame, queuing it,
finding the descriptor, grouping the clients that got the same frames. The sends
themselves (about three quarters of a broadcast's CPU time on loopback, most of it in
the kernel) are measured by bench_broadcast.py instead. Works with older checkouts,
whose broadcast took the sends from ``geventws.connection``.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

import gevent
import gevent.socket

import geventws
from geventws.server import WebSocketServer

CLIENTS = 1000
RUNS = 5
BROADCASTS = 300


def no_sends(fds: Any, data: bytes) -> list[tuple[int, int]]:
    """A batch of sends that sends nothing and reports every send complete."""
    return []


def main() -> None:
    deflate = sys.argv[1:2] == ["deflate"]
    connections: set[Any] = set()

    def handle(connection: Any, request: Any) -> None:
        connection.accept()
        connections.add(connection)
        try:
            for _ in connection:
                pass
        finally:
            connections.discard(connection)

    server = WebSocketServer(
        ("127.0.0.1", 0),
        handle,
        compression="deflate" if deflate else None,
        ping_interval=None,
        backlog=2048,
    )
    server.start()
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    clients = []
    try:
        for _ in range(CLIENTS):
            client = gevent.socket.create_connection(("127.0.0.1", server.server_port))
            key = base64.b64encode(os.urandom(16)).decode()
            client.sendall(
                f"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extension}\r\n".encode()
            )
            clients.append(client)
        with gevent.Timeout(60):
            while len(connections) < CLIENTS:
                gevent.sleep(0.05)
        for client in clients:
            assert client.recv(4096).startswith(b"HTTP/1.1 101")
        for module in ("geventws._writer", "geventws.connection"):
            if hasattr(sys.modules.get(module), "send_nowait"):
                sys.modules[module].send_nowait = no_sends  # type: ignore[attr-defined]
        message = "x" * 1024 if deflate else "y" * 64
        costs = []
        for _ in range(RUNS):
            start = time.process_time()
            for _ in range(BROADCASTS):
                assert geventws.broadcast(connections, message) == CLIENTS
                gevent.sleep(0)  # the turn ends: the batch is written
            costs.append((time.process_time() - start) / BROADCASTS / CLIENTS * 1e9)
        print(json.dumps({"ns_per_delivery": min(costs)}))
    finally:
        for client in clients:
            client.close()
        server.stop(1)


if __name__ == "__main__":
    main()
