"""Echo servers of the peers geventws is measured against, for scripts/bench_echo.py.

    python peers.py gevent-websocket PORT
    python peers.py websockets PORT
    python peers.py websockets-deflate PORT
    python peers.py picows PORT

All echo text as text and binary as binary and accept messages up to 64 MiB. Node's
``ws`` server is in ws_server.js and the raw gevent ceiling in ceiling.py.
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


def picows_echo(port: int) -> None:
    """picows' echo server as its documentation writes it: a WSListener that sends each
    frame back as it arrives (picows hands over frames, not reassembled messages; the
    load generator never fragments), answers a close with the same code and drops the
    connection. Plain asyncio event loop, with aiofastnet (a picows dependency) as the
    TCP transport, picows' default."""
    import asyncio

    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            else:
                transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

    async def main() -> None:
        server = await ws_create_server(
            lambda request: Echo(),
            "127.0.0.1",
            port,
            max_frame_size=2**26,
            websocket_handshake_timeout=None,
            backlog=2048,
        )
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    if name == "websockets-deflate":
        websockets_asyncio(port, "deflate")
    else:
        {
            "gevent-websocket": gevent_websocket,
            "websockets": websockets_asyncio,
            "picows": picows_echo,
        }[name](port)
