"""Echo servers of the peers geventws is measured against, for scripts/bench_echo.py.

    python peers.py gevent-websocket PORT
    python peers.py websockets PORT
    python peers.py websockets-deflate PORT

All echo text as text and binary as binary and accept messages up to 64 MiB.
``websockets-deflate`` negotiates permessage-deflate with websockets' defaults (12-bit
windows both ways, memLevel 5, every message compressed); the others run without
compression, like the geventws server they are compared with.
"""

from __future__ import annotations

import sys


def gevent_websocket(port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("400 Bad Request", [("Content-Length", "0")])
            return [b""]
        while True:
            message = ws.receive()
            if message is None:
                break
            ws.send(message, binary=isinstance(message, (bytes, bytearray)))
        return []

    server = pywsgi.WSGIServer(("127.0.0.1", port), app, handler_class=WebSocketHandler, log=None)
    print("listening", flush=True)
    server.serve_forever()


def websockets_asyncio(port: int, compression: str | None = None) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    async def echo(ws):  # type: ignore[no-untyped-def]
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(
            echo, "127.0.0.1", port, max_size=2**26, compression=compression, ping_interval=None
        ):
            print("listening", flush=True)
            await asyncio.Future()

    asyncio.run(main())


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    if name == "websockets-deflate":
        websockets_asyncio(port, "deflate")
    else:
        {"gevent-websocket": gevent_websocket, "websockets": websockets_asyncio}[name](port)
