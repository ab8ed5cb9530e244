"""Write the committed seed corpus, ``tests/fuzz/corpus/<target>/``.

``python -m tests.fuzz.make_corpus`` rewrites every seed from the recorded peers in
``captures/`` (see :mod:`tests.fuzz.capture`) and the hand-written cases below: frames
of every opcode, fragmented, compressed and interleaved messages, close frames good and
bad, application sends, handshakes that pass and fail. The frames come from the
independent writer in :mod:`tests.fuzz.wire`, compressed data from zlib directly.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path
from typing import Optional

from geventws.core.protocol import Side

from .common import Plan
from .protocol_target import Config, Script
from .wire import BINARY, CLOSE, CONT, PING, PONG, TEXT, build_frame, close_payload

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
CAPTURES = HERE / "captures"
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7's example key
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# Codec parameters for the deflate targets (see protocol_target.Config).
DEFLATE = (12, 15, False, False, 3, -1, 5)  # what geventws' server agrees with a browser
NO_CONTEXT = (12, 15, True, True, 0, 6, 8)
CLIENT_OF_WEBSOCKETS = (12, 12, False, False, 3, -1, 5)
CLIENT_WINDOW_8 = (8, 9, False, False, 0, -1, 5)


def deflate_payloads(messages: list[bytes], bits: int = 15, reset: bool = False) -> list[bytes]:
    """Each message compressed as RFC 7692 §7.2.1 says, sharing context unless ``reset``."""
    out = []
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    for message in messages:
        if reset:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def protocol_seeds(side: Side, deflate: bool) -> dict[str, bytes]:
    masked = side is Side.SERVER  # what a server reads comes from a client: masked

    def f(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
        return build_frame(opcode, payload, fin=fin, rsv=rsv, mask=MASK if masked else None)

    def script(max_size: Optional[int] = 2**20, codec: Optional[tuple] = None) -> Script:  # type: ignore[type-arg]
        if deflate and codec is None:
            codec = DEFLATE if side is Side.SERVER else CLIENT_OF_WEBSOCKETS
        return Script(side, Config(max_size, codec if deflate else None))

    euro = "€".encode()
    seeds = {
        "text": script().feed(f(TEXT, b"Hello")),
        "binary-16-bit-length": script().feed(f(BINARY, bytes(range(256)) * 2)),
        "fragmented-ping-between": script().feed(
            f(TEXT, b"Hel", fin=False) + f(PING, b"hi") + f(CONT, b"lo")
        ),
        "utf8-split-across-fragments": script().feed(
            f(TEXT, euro[:1], fin=False) + f(CONT, euro[1:2], fin=False) + f(CONT, euro[2:])
        ),
        "pong-then-close": script().feed(f(PONG, b"x") + f(CLOSE, close_payload(1000, b"bye"))),
        "close-without-code": script().feed(f(CLOSE)),
        "message-then-close-pending": script()
        .feed(f(TEXT, b"a") + f(CLOSE, close_payload(1001)), keep_pending=True)
        .receive_empty(),
        "message-then-error-pending": script()
        .feed(f(BINARY, b"a") + f(0x3, b""), keep_pending=True)
        .feed(f(TEXT, b"ignored")),
        "invalid-utf8": script().feed(f(TEXT, b"\xce\xba\xff")),
        "close-one-byte": script().feed(f(CLOSE, b"\x03")),
        "close-code-1005-on-wire": script().feed(f(CLOSE, close_payload(1005))),
        "close-reason-not-utf8": script().feed(f(CLOSE, close_payload(1000, b"\xff"))),
        "reserved-bits": script().feed(f(TEXT, b"x", rsv=2)),
        "wrong-masking": script().feed(build_frame(TEXT, b"x", mask=None if masked else MASK)),
        "over-max-size": script(max_size=125).feed(f(BINARY, b"z" * 200)),
        "fragments-over-max-size": script(max_size=125).feed(
            f(BINARY, b"z" * 100, fin=False) + f(CONT, b"z" * 100)
        ),
        "control-over-125": script().feed(f(PING, b"p" * 126)),
        "fragmented-control": script().feed(f(PING, b"p", fin=False)),
        "continuation-alone": script().feed(f(CONT, b"x")),
        "data-inside-fragmented": script().feed(f(TEXT, b"a", fin=False) + f(TEXT, b"b")),
        "eof-mid-frame": script().feed(f(TEXT, b"Hello")[:4]).eof(),
        "application-sends": script()
        .send("hello")
        .send(b"\x00binary")
        .ping(b"app-ping")
        .ping(b"app-pong", pong=True)
        .fragment("frag", fin=False)
        .fragment("ment", fin=False)
        .fragment("ed", fin=True)
        .send("x" * 300)
        .close(1000, b"bye")
        .feed(f(CLOSE, close_payload(1000))),
        "peer-closes-then-send": script().feed(f(CLOSE, close_payload(4000, b"r"))).send("late"),
    }
    byte_by_byte = script()
    for byte in f(TEXT, b"Hi") + f(PING, b"") + f(CLOSE, close_payload(1000)):
        byte_by_byte.feed(bytes([byte]))
    seeds["byte-by-byte"] = byte_by_byte
    if not masked and not deflate:
        # A 64-bit length (over 65535 bytes), fed in two steps; the only large seed.
        big = f(BINARY, b"\x5a" * 70000)
        seeds["binary-64-bit-length"] = script(max_size=None).feed(big[:40000]).feed(big[40000:])
    if deflate:
        seeds.update(_deflate_seeds(side, f, script))
    captured = {
        (Side.SERVER, False): ["websocket-client-frames", "websockets-client-frames"],
        (Side.SERVER, True): ["websockets-client-frames", "chromium-frames"],
        (Side.CLIENT, False): ["websockets-server-frames"],
        (Side.CLIENT, True): ["websockets-server-frames"],
    }[side, deflate]
    for name in captured:
        seeds[name] = script().feed((CAPTURES / name).read_bytes())
    return {name: s.encode() for name, s in seeds.items()}


def _deflate_seeds(side: Side, f, script) -> dict[str, Script]:  # type: ignore[no-untyped-def]
    hello, again = deflate_payloads([b"Hello, Hello, Hello", b"Hello, Hello, Hello"])
    fresh = deflate_payloads([b"Hello, Hello, Hello"] * 2, reset=True)
    (long,) = deflate_payloads([("compressible " * 100).encode()])
    (bomb,) = deflate_payloads([bytes(2**20)])
    finished = zlib.compressobj(6, zlib.DEFLATED, -15)
    ended = finished.compress(b"final block") + finished.flush(zlib.Z_FINISH)
    (window_9,) = deflate_payloads([b"abcdefgh" * 100], bits=9)
    seeds = {
        "compressed-text": script().feed(f(TEXT, hello, rsv=4)),
        "compressed-context-takeover": script().feed(
            f(TEXT, hello, rsv=4) + f(BINARY, again, rsv=4)
        ),
        "compressed-no-context-takeover": script(codec=NO_CONTEXT).feed(
            f(TEXT, fresh[0], rsv=4) + f(TEXT, fresh[1], rsv=4)
        ),
        "compressed-fragmented": script().feed(
            f(TEXT, long[:20], fin=False, rsv=4) + f(PING) + f(CONT, long[20:])
        ),
        "compressed-bomb": script(max_size=1000).feed(f(BINARY, bomb, rsv=4)),
        "compressed-stream-ended": script().feed(f(TEXT, ended, rsv=4) + f(TEXT, hello, rsv=4)),
        "compressed-garbage": script().feed(f(BINARY, b"\xff\xff\xff\xff", rsv=4)),
        "rsv1-on-continuation": script().feed(f(TEXT, b"a", fin=False) + f(CONT, b"b", rsv=4)),
        "rsv1-on-control": script().feed(f(PING, b"", rsv=4)),
        "uncompressed-with-deflate": script().feed(f(TEXT, b"plain")),
        "window-9": script(codec=(12, 9, False, False, 3, -1, 5)).feed(f(BINARY, window_9, rsv=4)),
        "compressed-sends": script()
        .send("a" * 200)
        .send(b"b" * 10, compress=True)
        .send(b"c" * 500, compress=False)
        .fragment(b"d" * 300, fin=False, compress=True)
        .fragment(b"e" * 300, fin=True)
        .send("f" * 200),
    }
    if side is Side.CLIENT:
        seeds["client-window-8-sends-uncompressed"] = (
            script(codec=CLIENT_WINDOW_8).send("a" * 300, compress=True).fragment("b", fin=True)
        )
    return seeds


REQUEST = (
    "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _request(*, line: str = "GET /chat HTTP/1.1", extra: str = "", drop: str = "") -> bytes:
    lines = [line] + [
        field for field in REQUEST.split("\r\n")[1:-2] if not drop or not field.startswith(drop)
    ]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def request_seeds() -> dict[str, bytes]:
    seeds = {
        name: (CAPTURES / f"{name}-request").read_bytes()
        for name in ("chromium", "websockets-client", "websocket-client")
    }
    seeds.update(
        {
            "rfc6455-example": REQUEST.encode(),
            "deflate-offers": _request(
                extra="Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;"
                ' client_no_context_takeover; server_max_window_bits=10; client_max_window_bits="9",'
                " permessage-deflate\r\n"
            ),
            "deflate-window-8-declined": _request(
                extra="Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n"
            ),
            "deflate-bad-parameter": _request(
                extra="Sec-WebSocket-Extensions: permessage-deflate; foo=1\r\n"
            ),
            "head-then-frame": REQUEST.encode() + build_frame(TEXT, b"early", mask=MASK),
            "http-1.0": _request(line="GET /chat HTTP/1.0"),
            "http-2.0": _request(line="GET /chat HTTP/2.0"),
            "post": _request(line="POST /chat HTTP/1.1"),
            "absolute-form": _request(line="GET ws://server.example.com/chat?x=1 HTTP/1.1"),
            "query-and-cookies": _request(
                line="GET /chat/room%201?a=1&a=2&b=%C3%A9 HTTP/1.1",
                extra='Cookie: session=abc; theme="dark"\r\nCookie: bad"=x\r\n',
            ),
            "missing-host": _request(drop="Host"),
            "two-keys": _request(extra="Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "short-key": _request(drop="Sec-WebSocket-Key", extra="Sec-WebSocket-Key: YQ==\r\n"),
            "version-8": _request(
                drop="Sec-WebSocket-Version", extra="Sec-WebSocket-Version: 8\r\n"
            ),
            "not-an-upgrade": _request(drop="Upgrade"),
            "folded-header": _request(extra="X-Folded: a\r\n b\r\n"),
            "space-before-colon": _request(extra="Host : evil\r\n"),
            "bare-lf": REQUEST.replace("\r\n", "\n").encode(),
            "control-in-value": _request(extra="X-Bad: a\x01b\r\n"),
            "obs-text-value": _request(extra="X-Latin: caf\xe9\r\n"),
            "too-many-fields": _request(extra="X: y\r\n" * 130),
            "incomplete": REQUEST.encode()[:-2],
        }
    )
    return seeds


def response_seeds() -> dict[str, bytes]:
    ok = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {ACCEPT}\r\n"
    )
    return {
        "websockets-server": (CAPTURES / "websockets-server-response").read_bytes(),
        "websockets-server-and-frames": (CAPTURES / "websockets-server-response").read_bytes()
        + (CAPTURES / "websockets-server-frames").read_bytes(),
        "accept": (ok + "\r\n").encode(),
        "accept-subprotocol": (ok + "Sec-WebSocket-Protocol: chat\r\n\r\n").encode(),
        "accept-other-subprotocol": (ok + "Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode(),
        "accept-deflate": (
            ok + "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=8\r\n\r\n"
        ).encode(),
        "accept-deflate-not-offered-parameter": (
            ok + "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode(),
        "accept-other-extension": (
            ok + "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n"
        ).encode(),
        "wrong-accept": (ok.replace(ACCEPT, "AAAA") + "\r\n").encode(),
        "two-accepts": (ok + f"Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n").encode(),
        "rejected-400": b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 11\r\nConnection: close\r\n\r\nbad request",
        "upgrade-required-426": b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "redirect": b"HTTP/1.1 301 Moved Permanently\r\nLocation: wss://elsewhere.example/x\r\n\r\n",
        "no-reason": b"HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "http-1.0": b"HTTP/1.0 200 OK\r\n\r\n",
        "status-4-digits": b"HTTP/1.1 1010 Nope\r\n\r\n",
    }


def header_seed(
    values: list[bytes], field: int = 0, server_bits: int = 12, client_bits: int = 12
) -> bytes:
    plan = Plan().int(len(values), 1, 4).int(field, 0, 4)
    plan.int(server_bits, 9, 15).int(client_bits, 9, 15)
    for value in values[:-1]:
        plan.int(len(value), 0, 1024)
    for value in values:
        plan.bytes(value)
    return plan.encode()


def headers_seeds() -> dict[str, bytes]:
    return {
        "client-offer": header_seed([b"permessage-deflate; client_max_window_bits"]),
        "firefox-offer": header_seed([b"permessage-deflate"], field=1),
        "all-parameters": header_seed(
            [
                b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                b"server_max_window_bits=10; client_max_window_bits=9"
            ],
            server_bits=15,
            client_bits=9,
        ),
        "quoted-values": header_seed(
            [b'permessage-deflate; client_max_window_bits="10"; server_max_window_bits="15"'],
            field=2,
        ),
        "several-offers": header_seed(
            [
                b"x-webkit-deflate-frame",
                b"permessage-deflate; server_max_window_bits=8, "
                b"permessage-deflate; client_no_context_takeover",
            ],
            field=3,
        ),
        "server-answer": header_seed(
            [b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"], field=4
        ),
        "subprotocols": header_seed([b"chat, superchat", b"Chat", b" , ,mqtt"], field=1),
        "connection-tokens": header_seed([b"keep-alive, Upgrade"], field=3),
        "key": header_seed([KEY.encode()], field=0),
        "accept": header_seed([ACCEPT.encode()], field=0),
        "version": header_seed([b"13", b"8"], field=1),
        "empty": header_seed([b""], field=4),
    }


URIS = [
    "ws://example.com/chat?room=1",
    "wss://example.com",
    "ws://example.com:8080/",
    "wss://[::1]:8443/path",
    "ws://[fe80::1%25eth0]/",
    "ws://user:pa%20ss@host.example/x",
    "ws://127.0.0.1:65535/a/b/../c?q=%20&r",
    "ws://bücher.example/pfad?q=ä",
    "ws://host/with space?and=space",
    "ws://host/frag#ment",
    "http://example.com/",
    "ws://host:99999/",
    "ws://:80/",
    "wss://HOST.Example.COM:443/Path",
]


def uri_seeds() -> dict[str, bytes]:
    return {f"uri-{index:02d}": uri.encode() for index, uri in enumerate(URIS)}


def all_seeds() -> dict[str, dict[str, bytes]]:
    return {
        "protocol_server": protocol_seeds(Side.SERVER, deflate=False),
        "protocol_client": protocol_seeds(Side.CLIENT, deflate=False),
        "protocol_server_deflate": protocol_seeds(Side.SERVER, deflate=True),
        "protocol_client_deflate": protocol_seeds(Side.CLIENT, deflate=True),
        "http_request": request_seeds(),
        "http_response": response_seeds(),
        "headers": headers_seeds(),
        "uri": uri_seeds(),
    }


def main() -> None:
    for target, seeds in all_seeds().items():
        directory = CORPUS / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
