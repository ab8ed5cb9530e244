"""permessage-deflate over real sockets, against independent peers.

websockets' client and server negotiate and speak compression on their own (their
codec, not ours); a raw socket client checks the bytes on the wire with zlib.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import zlib
from typing import Any, Callable

import pytest
from websockets.exceptions import ConnectionClosedError as WsClosedError
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection

import geventws
from geventws import Connection, InvalidResponse, Request, _sockets, _writer
from geventws.examples.echo import handle as echo

from .utils import RawClient, client_frame, wait_for

TEXT = "Compressible text, κόσμε, repeated. " * 300
BLOB = bytes(range(256)) * 400


def pmd(ws: Any) -> PerMessageDeflate:
    (extension,) = ws.protocol.extensions
    assert isinstance(extension, PerMessageDeflate)
    return extension


def windows(extension: PerMessageDeflate) -> tuple[int, int, bool, bool]:
    return (
        extension.local_max_window_bits,
        extension.remote_max_window_bits,
        extension.local_no_context_takeover,
        extension.remote_no_context_takeover,
    )


# -- websockets' client against the geventws server -----------------------------------


def test_websockets_client_default_offer(serve: Any) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        seen.put(connection.extensions)
        echo(connection, request)

    server = serve(handler)
    with ws_connect(server.url) as ws:
        agreed = "permessage-deflate; client_max_window_bits=12"
        assert ws.response.headers["Sec-WebSocket-Extensions"] == agreed
        assert seen.get(timeout=5) == agreed
        # websockets' side: it compresses with 12 bits, we with up to 15 (default 12).
        assert windows(pmd(ws)) == (12, 15, False, False)
        for _ in range(3):  # context takeover both ways
            ws.send(TEXT)
            assert ws.recv() == TEXT
            ws.send(BLOB)
            assert ws.recv() == BLOB
        ws.send(["frag", "mented ", "and compressed " * 20])
        assert ws.recv() == "fragmented " + "and compressed " * 20


@pytest.mark.parametrize(
    ("factory", "agreed", "expected"),
    [
        (
            ClientPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_no_context_takeover=True,
                server_max_window_bits=10,
                client_max_window_bits=9,
            ),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=9",
            (9, 10, True, True),
        ),
        (
            ClientPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=15),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
            (12, 12, False, False),
        ),
        (
            ClientPerMessageDeflateFactory(client_max_window_bits=None),
            "permessage-deflate",
            (15, 15, False, False),
        ),
    ],
)
def test_websockets_client_parameter_sets(
    serve: Any, factory: Any, agreed: str, expected: tuple[int, int, bool, bool]
) -> None:
    server = serve(echo)
    with ws_connect(server.url, compression=None, extensions=[factory]) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == agreed
        assert windows(pmd(ws)) == expected
        for message in [TEXT, BLOB, "short", TEXT, os.urandom(70000)]:
            ws.send(message)
            assert ws.recv() == message


def test_server_without_compression_declines(serve: Any) -> None:
    server = serve(echo, compression=None)
    with ws_connect(server.url) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        ws.send(TEXT)
        assert ws.recv() == TEXT


def test_invalid_offer_gets_400(serve: Any) -> None:
    server = serve(echo)
    client = RawClient(
        server.port, headers="Sec-WebSocket-Extensions: permessage-deflate; bogus=1\r\n"
    )
    try:
        assert client.status == 400
        assert b"invalid Sec-WebSocket-Extensions" in client.buffer
    finally:
        client.close()


def test_wire_format_threshold_and_bomb(serve: Any) -> None:
    """On the wire: RSV1 on compressed messages only; a bomb closes with 1009."""
    server = serve(echo, compression_threshold=100, max_size=2**20)
    client = RawClient(server.port, headers="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    try:
        assert client.status == 101
        assert b"Sec-WebSocket-Extensions: permessage-deflate\r\n" in client.head + b"\r\n"
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        decompressor = zlib.decompressobj(-15)
        for text in ["tiny", "long " * 100]:
            payload = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
            client.send(client_frame(1, payload[:-4], rsv=4))
            b0, _, echoed = client.read_frame()
            if len(text) < 100:
                assert b0 == 0x81 and echoed == text.encode()
            else:
                assert b0 == 0xC1
                assert decompressor.decompress(echoed + b"\x00\x00\xff\xff") == text.encode()
        bomb = compressor.compress(bytes(32 * 2**20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        client.send(client_frame(2, bomb[:-4], rsv=4))
        frames, code = client.read_until_close()
        assert frames == [] and code == 1009
        assert client.wait_eof()
    finally:
        client.close()


def test_corrupt_stream_closes_1007(serve: Any) -> None:
    server = serve(echo)
    client = RawClient(server.port, headers="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    try:
        client.send(client_frame(1, b"\xff\xff\xff\xff", rsv=4))
        assert client.read_until_close() == ([], 1007)
    finally:
        client.close()


# -- the geventws client against websockets' server ------------------------------------


def ws_echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def test_client_against_websockets_server_defaults(ws_server: Callable[..., int]) -> None:
    port = ws_server(ws_echo)  # websockets' default: 12-bit windows both ways, memLevel 5
    with geventws.connect(f"ws://127.0.0.1:{port}") as connection:
        agreed = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        assert connection.extensions == agreed
        assert connection.response_headers["Sec-WebSocket-Extensions"] == agreed
        for _ in range(3):
            connection.send(TEXT)
            assert connection.receive(timeout=10) == TEXT
            connection.send(BLOB, binary=True)
            assert connection.receive(timeout=10) == BLOB


def test_client_against_websockets_server_parameters(ws_server: Callable[..., int]) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        seen.put(windows(pmd(ws)))
        ws_echo(ws)

    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=9,
        client_max_window_bits=10,
    )
    port = ws_server(handler, compression=None, extensions=[factory])
    with geventws.connect(
        f"ws://127.0.0.1:{port}", compression_window_bits=15, compression_threshold=0
    ) as connection:
        assert connection.extensions == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=9; client_max_window_bits=10"
        )
        assert seen.get(timeout=5) == (9, 10, True, True)
        for message in ["", "x", TEXT, TEXT]:
            connection.send(message)
            assert connection.receive(timeout=10) == message


def test_client_without_compression_offers_nothing(ws_server: Callable[..., int]) -> None:
    seen: queue.Queue[Any] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        seen.put(ws.request.headers.get("Sec-WebSocket-Extensions"))
        ws_echo(ws)

    port = ws_server(handler)
    with geventws.connect(f"ws://127.0.0.1:{port}", compression=None) as connection:
        assert connection.extensions is None
        assert seen.get(timeout=5) is None
        connection.send(TEXT)
        assert connection.receive(timeout=10) == TEXT


def test_client_fails_on_extension_it_did_not_offer(serve: Any) -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.accept(headers={"Sec-WebSocket-Extensions": "x-foo"})

    server = serve(handler, compression=None)
    with pytest.raises(InvalidResponse, match="not offered"):
        geventws.connect(server.url)


def test_geventws_both_ends_with_send_override(serve: Any) -> None:
    server = serve(echo)
    with geventws.connect(server.url, compression_threshold=0) as connection:
        assert connection.extensions == "permessage-deflate; client_max_window_bits=12"
        already = zlib.compress(os.urandom(5000))
        connection.send(already, binary=True, compress=False)
        assert connection.receive(timeout=10) == already
        connection.send("a", compress=True)
        assert connection.receive(timeout=10) == "a"


# -- broadcast with mixed compression ---------------------------------------------------


@pytest.mark.parametrize("implementation", ["compiled", "python"])
def test_broadcast_to_compressed_and_plain_clients(
    serve: Any, monkeypatch: pytest.MonkeyPatch, implementation: str
) -> None:
    """One broadcast reaches clients with and without compression; each connection's
    own messages afterwards still decode (its context was dropped correctly). With the
    compiled batch of sends and with its pure-Python fallback."""
    if implementation == "python":
        monkeypatch.setattr(_writer, "send_nowait", _sockets._send_nowait_python)
    holder: dict[str, Any] = {}

    def handler(connection: Connection, request: Request) -> None:
        for message in connection:
            if message == "go":
                server = holder["server"].server
                for other in list(server.connections):
                    other.send(TEXT + "?")  # builds each connection's context
                for _ in range(2):
                    geventws.broadcast(server.connections, TEXT)
                for other in list(server.connections):
                    other.send(TEXT + "!")

    server = serve(handler)
    holder["server"] = server
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(ws_connect(server.url)),
            stack.enter_context(ws_connect(server.url, compression=None)),
            stack.enter_context(
                ws_connect(
                    server.url,
                    compression=None,
                    extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=10)],
                )
            ),
        ]
        assert wait_for(lambda: len(server.server.connections) == 3)
        assert [bool(ws.protocol.extensions) for ws in clients] == [True, False, True]
        for ws in clients:
            ws.send("warm up the context " * 10)  # not echoed: the handler ignores it
        clients[0].send("go")
        for ws in clients:
            received = [ws.recv(timeout=10) for _ in range(4)]
            assert received == [TEXT + "?", TEXT, TEXT, TEXT + "!"]


# -- the CLI ---------------------------------------------------------------------------


def test_cli_compression_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "geventws", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--compression",
        "--compression-window-bits",
        "--compression-mem-level",
        "--compression-threshold",
        "--compression-level",
    ):
        assert flag in out


# -- fragmented messages from the server -----------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
def test_server_streams_fragmented_messages(serve: Any, compression: Any) -> None:
    """send(iterable) streams one message a frame per item; websockets' client, with
    and without compression, reads the whole message."""
    errors: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        connection.send(f"chunk {i} " * 50 for i in range(5))  # a generator, text
        connection.send([b"\x00" * 3000, bytearray(b"\x01" * 3000)], binary=True)
        connection.send([])  # nothing at all
        utf8 = "κόσμε".encode()
        connection.send([utf8[:3], utf8[3:]])  # bytes as text, a character split in two
        try:
            connection.send(["text", b"bytes"])
        except TypeError as exc:
            errors.put(exc)
        connection.receive(timeout=10)

    server = serve(handler)
    with ws_connect(server.url, compression=compression) as ws:
        assert ws.recv(timeout=10) == "".join(f"chunk {i} " * 50 for i in range(5))
        assert ws.recv(timeout=10) == b"\x00" * 3000 + b"\x01" * 3000
        assert ws.recv(timeout=10) == "κόσμε"
        assert isinstance(errors.get(timeout=10), TypeError)
        # The bad message closed the connection with 1011 (it had started).
        with pytest.raises(WsClosedError):
            ws.recv(timeout=10)
        assert ws.close_code == 1011


def test_other_greenlets_wait_for_a_fragmented_message(serve: Any) -> None:
    """A message sent from another greenlet while a fragmented one streams goes after
    it, never between its frames."""
    import gevent

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()

        others = []

        def slow_fragments() -> Any:
            for i in range(3):
                yield f"part{i};"
                if i == 0:  # the message has started: another greenlet sends now
                    others.append(gevent.spawn(connection.send, "interloper"))
                gevent.sleep(0.01)  # the other greenlet runs meanwhile, and must wait

        connection.send(slow_fragments())
        gevent.joinall(others)
        connection.receive(timeout=10)

    server = serve(handler)
    with ws_connect(server.url) as ws:
        assert ws.recv(timeout=10) == "part0;part1;part2;"
        assert ws.recv(timeout=10) == "interloper"


def test_broadcast_skips_a_connection_sending_a_fragmented_message(serve: Any) -> None:
    import gevent

    counts: queue.Queue[int] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()

        def fragments() -> Any:
            yield "start;"
            counts.put(geventws.broadcast([connection], "broadcast"))
            yield "end"

        connection.send(fragments())
        gevent.sleep(0)
        counts.put(geventws.broadcast([connection], "after"))
        connection.receive(timeout=10)

    server = serve(handler)
    with ws_connect(server.url) as ws:
        assert ws.recv(timeout=10) == "start;end"
        assert ws.recv(timeout=10) == "after"
        assert [counts.get(timeout=10), counts.get(timeout=10)] == [0, 1]


def test_compression_level_zero_stores(serve: Any) -> None:
    """``compression_level=0``: deflate's stored blocks, no compression work at all."""
    server = serve(echo, compression_level=0, compression_threshold=0)
    client = RawClient(server.port, headers="Sec-WebSocket-Extensions: permessage-deflate\r\n")
    try:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        text = b"aaaa" * 100
        payload = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
        client.send(client_frame(1, payload[:-4], rsv=4))
        b0, _, echoed = client.read_frame()
        assert b0 == 0xC1 and len(echoed) > len(text)  # stored, not compressed
        assert zlib.decompressobj(-15).decompress(echoed + b"\x00\x00\xff\xff") == text
    finally:
        client.close()
