"""An echo server: every message comes back as it came, text as text, binary as binary.

Run it with ``geventws serve geventws.examples.echo:handle`` (port 8000 by default).
"""

from __future__ import annotations

from geventws import Connection, Request


def handle(connection: Connection, request: Request) -> None:
    """Echo each message back until the client closes."""
    for message in connection:
        connection.send(message, binary=isinstance(message, bytes))
