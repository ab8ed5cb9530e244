"""Record real handshakes and frame streams from independent peers, for the seeds.

``python -m tests.fuzz.capture`` runs, on loopback, each peer against a raw socket that
plays the other side by the RFC and records what the peer sends into
``tests/fuzz/captures/``:

* websockets' client and websocket-client: the upgrade request, then the masked (and,
  for websockets, compressed) frames of a short conversation;
* headless Chromium (Debian's ``chromium``): the same from the browser's WebSocket;
* websockets' server: the 101 answer and its unmasked, compressed frames.

The recorded bytes are committed; ``make_corpus.py`` wraps them into seeds. Rerun it
only to refresh them (Chromium is skipped when not installed).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

CAPTURES = Path(__file__).parent / "captures"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEADLINE = 30.0


def _accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _read_until_close(sock: socket.socket, data: bytes) -> bytes:
    """Everything until the peer closes TCP (it does after the closing handshake)."""
    sock.settimeout(DEADLINE)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
        if _has_close_frame(data, masked=True):
            # Echo the close, unmasked, so the client completes its handshake.
            sock.sendall(b"\x88\x02\x03\xe8")
            time.sleep(0.2)
            return data


def _has_close_frame(data: bytes, masked: bool) -> bool:
    pos = 0
    while len(data) - pos >= 2:
        size = data[pos + 1] & 0x7F
        head = 2
        if size == 126:
            size, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        head += 4 if masked else 0
        if data[pos] & 0x0F == 0x8:
            return len(data) >= pos + head + size
        pos += head + size
    return False


def record_client(
    run_client: Callable[[int], None], answer_extensions: Optional[bytes]
) -> tuple[bytes, bytes]:
    """Run ``run_client(port)`` against a raw server; return its request and frames."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)
    port = listener.getsockname()[1]
    thread = threading.Thread(target=run_client, args=(port,), daemon=True)
    thread.start()
    try:
        while True:  # browsers may open (and drop) speculative connections first
            conn, _ = listener.accept()
            conn.settimeout(DEADLINE)
            try:
                head, rest = _read_head(conn)
                break
            except ConnectionError:
                conn.close()
        try:
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            answer = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept_value(key) + b"\r\n"
            )
            if answer_extensions:
                answer += b"Sec-WebSocket-Extensions: " + answer_extensions + b"\r\n"
            if b"sec-websocket-protocol" in head.lower():
                answer += b"Sec-WebSocket-Protocol: chat\r\n"
            conn.sendall(answer + b"\r\n")
            frames = _read_until_close(conn, rest)
        finally:
            conn.close()
    finally:
        listener.close()
    thread.join(DEADLINE)
    return head, frames


def websockets_client(port: int) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/chat?room=1", subprotocols=["chat"]) as ws:  # type: ignore[list-item]
        ws.send("Hello, world! " * 20)
        ws.send(b"\x00\x01\x02\x03" * 50)
        ws.send(["frag", "mented ", "text" * 40])
        ws.ping(b"ping-data")


def websocket_client_lib(port: int) -> None:
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=DEADLINE)
    ws.send("Hello")
    ws.send_binary(b"\xff" * 300)
    ws.ping("p")
    ws.close()


def chromium_client(port: int) -> None:
    """Headless Chromium on a data: page that opens a WebSocket to ``port``."""
    script = (
        f"const ws = new WebSocket('ws://127.0.0.1:{port}/chat', ['chat', 'superchat']);"
        "ws.onopen = () => { ws.send('Hello from Chromium, '.repeat(10));"
        "ws.send(new Uint8Array(300).map((_, i) => i % 251)); ws.send('é€😀');"
        "ws.close(1000, 'done'); };"
    )
    with tempfile.TemporaryDirectory() as profile:
        page = Path(profile) / "page.html"
        page.write_text(f'<!doctype html><meta charset="utf-8"><script>{script}</script>')
        process = subprocess.Popen(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}/data",
                page.as_uri(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(8)  # long enough for the page to run; the server side records
        finally:
            process.kill()
            process.wait(DEADLINE)


def record_server() -> tuple[bytes, bytes]:
    """websockets' server answering a raw upgrade request with permessage-deflate,
    then sending messages: its 101 answer and unmasked (compressed) frames."""
    from websockets.sync.server import ServerConnection, serve

    def handler(ws: ServerConnection) -> None:
        ws.send("Hello from websockets, " * 10)
        ws.send(b"\x10\x20" * 200)
        ws.send(["server ", "fragments"])
        ws.close(1000, "bye")

    with serve(handler, "127.0.0.1", 0, subprotocols=["chat"]) as server:  # type: ignore[list-item]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(
                b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            )
            head, rest = _read_head(sock)
            data = rest
            while not _has_close_frame(data, masked=False):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            sock.sendall(b"\x88\x82abcd" + bytes([0x03 ^ 0x61, 0xE8 ^ 0x62]))
        server.shutdown()
    return head, data


def main() -> None:
    CAPTURES.mkdir(exist_ok=True)
    peers: list[tuple[str, Callable[[int], None], Optional[bytes]]] = [
        ("websockets-client", websockets_client, b"permessage-deflate"),
        ("websocket-client", websocket_client_lib, None),
    ]
    if shutil.which("chromium"):
        peers.append(("chromium", chromium_client, b"permessage-deflate"))
    for name, run_client, extensions in peers:
        head, frames = record_client(run_client, extensions)
        (CAPTURES / f"{name}-request").write_bytes(head)
        (CAPTURES / f"{name}-frames").write_bytes(frames)
        print(f"{name}: {len(head)} + {len(frames)} bytes")
    head, frames = record_server()
    (CAPTURES / "websockets-server-response").write_bytes(head)
    (CAPTURES / "websockets-server-frames").write_bytes(frames)
    print(f"websockets-server: {len(head)} + {len(frames)} bytes")


if __name__ == "__main__":
    main()
