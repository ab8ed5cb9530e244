"""Broadcast servers for scripts/bench_broadcast.py.

    python broadcast_app.py geventws|websockets|gevent-websocket|picows PORT [deflate]

Each keeps the set of connected clients and relays every message a client sends to
every client (the sender included), the way each library's users write it:

* geventws: ``geventws.broadcast(clients, message)`` (frames once, non-blocking sends);
* websockets: ``websockets.asyncio.server.broadcast(clients, message)``;
* gevent-websocket: a loop calling ``ws.send(message)`` on each client, on gevent's
  pywsgi, monkey-patched, Nagle's algorithm left on (neither sets TCP_NODELAY);
* picows: a loop calling ``transport.send()`` on each client's transport.

With ``deflate``, geventws and websockets negotiate permessage-deflate with their
default settings: geventws compresses each message once for all clients, websockets
once per client. gevent-websocket and picows don't implement permessage-deflate.
The raw gevent ceiling's broadcast is in ceiling.py, Node's ws in ws_server.js.
"""

from __future__ import annotations

import sys

DEFLATE = sys.argv[3:4] == ["deflate"]


def run_geventws(port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    import geventws

    clients: set[geventws.Connection] = set()

    def handle(connection: geventws.Connection, request: geventws.Request) -> None:
        connection.accept()
        clients.add(connection)
        try:
            for message in connection:
                geventws.broadcast(clients, message, binary=isinstance(message, bytes))
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
                broadcast(clients, message)
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


def run_gevent_websocket(port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent import pywsgi
    from geventwebsocket.exceptions import WebSocketError
    from geventwebsocket.handler import WebSocketHandler

    clients: set = set()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        clients.add(ws)
        try:
            while True:
                message = ws.receive()
                if message is None:
                    break
                for client in list(clients):
                    try:
                        client.send(message, binary=isinstance(message, (bytes, bytearray)))
                    except WebSocketError:
                        clients.discard(client)
        finally:
            clients.discard(ws)
        return []

    server = pywsgi.WSGIServer(
        ("127.0.0.1", port), app, handler_class=WebSocketHandler, log=None, backlog=2048
    )
    server.serve_forever()


def run_picows(port: int) -> None:
    import asyncio

    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    clients: set[WSTransport] = set()

    class Relay(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            clients.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            clients.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                payload = frame.get_payload_as_memoryview()
                for client in clients:
                    client.send(frame.msg_type, payload)

    async def main() -> None:
        server = await ws_create_server(
            lambda request: Relay(),
            "127.0.0.1",
            port,
            websocket_handshake_timeout=None,
            backlog=2048,
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    {
        "geventws": run_geventws,
        "websockets": run_websockets,
        "gevent-websocket": run_gevent_websocket,
        "picows": run_picows,
    }[sys.argv[1]](int(sys.argv[2]))
