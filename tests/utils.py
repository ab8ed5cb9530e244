"""Test helpers: a geventws server on its own hub in a thread, and a raw client.

The server runs in a background thread with its own gevent hub, so blocking clients
from other libraries (websockets' sync client, websocket-client, requests, raw sockets)
can be used from the test itself without monkey-patching anything.

The raw client builds frames with its own code, independent of geventws.core.frames, so that
the server is not only checked against itself.
"""

from __future__ import annotations

import base64
import gc
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import gevent
import greenlet
import pytest

from geventws import WebSocketServer


def require(available: bool, message: str) -> None:
    """A real server or tool a test needs (redis-server, nginx, chromium...): skip when it
    is missing, except in CI (``GEVENTWS_CI=1``, set by ``.ci/run``), where a missing one
    fails the run instead of hiding the tests."""
    if available:
        return
    if os.environ.get("GEVENTWS_CI") == "1":
        pytest.fail(f"{message} (required: GEVENTWS_CI=1)")
    pytest.skip(message)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def wait_in_hub(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """:func:`wait_for` through this thread's hub: poll ``predicate`` while letting the
    hub run (handlers, a closing in progress); its last value."""
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.005)
    return predicate()


#: The parts of a connection (garbage left by them would be a reference cycle).
CONNECTION_PARTS = {"Connection", "Transport", "Reader", "Writer", "Keepalive", "Protocol"}


@contextmanager
def cycles_left() -> Iterator[Callable[[], set[str]]]:
    """Run the block with the cycle collector off and ``DEBUG_SAVEALL``; what it yields
    collects and returns the names of the connection parts (:data:`CONNECTION_PARTS`)
    among what the collection found: the parts that were in a reference cycle."""

    def collect() -> set[str]:
        gc.collect()
        return {type(obj).__name__ for obj in gc.garbage} & CONNECTION_PARTS

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
    try:
        yield collect
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


class ServerThread:
    """A :class:`WebSocketServer` on 127.0.0.1 (a free port), in a thread of its own;
    or another gevent server made by ``factory(address, handler, **options)``, such as
    ``gevent.pywsgi.WSGIServer`` with a WSGI application as ``handler``."""

    def __init__(
        self,
        handler: Callable[..., Any],
        factory: Callable[..., Any] = WebSocketServer,
        **options: Any,
    ) -> None:
        self.handler: Optional[Callable[..., Any]] = handler
        self.factory = factory
        self.options = options
        self.port = 0
        self.server: Any = None
        self.leftover_greenlets: list[Any] = []
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="geventws-test-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server thread did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            self.server = self.factory(("127.0.0.1", 0), self.handler, **self.options)
            self.server.start()
            self.port = self.server.server_port
            self.hub = gevent.get_hub()
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.server.serve_forever()
        gevent.sleep(0.01)  # let finished greenlets unwind
        # Collect garbage while the loop still exists: sockets (such as pywsgi's socket
        # readers, which it drops without closing) must not be closed on a destroyed loop.
        gc.collect()
        hub = gevent.get_hub()
        self.leftover_greenlets = [
            g
            for g in gc.get_objects()
            if type(g) is not weakref.ProxyType
            and isinstance(g, greenlet.greenlet)  # raw greenlets too, not only Greenlet
            and g.parent is hub
            and not g.dead
        ]
        hub.destroy(destroy_loop=True)  # the loop's own descriptors go with it

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, function: Callable[[], Any]) -> None:
        """Run ``function`` in a new greenlet of the server's hub (thread-safe)."""
        self.hub.loop.run_callback_threadsafe(gevent.spawn, function)

    def stop(self, timeout: float = 5.0) -> None:
        if self.server is None or not self._thread.is_alive():
            return
        server = self.server
        self.call(lambda: server.stop(timeout))
        self._thread.join(timeout + 10)
        assert not self._thread.is_alive(), "server thread did not stop"

    def release(self) -> None:
        """Let go of the stopped server and its handler. Needed because the thread's last
        frame stays reachable after it ended (from the traceback of the ``LoopExit``
        that destroying its hub raises and catches), and through it this object: else
        whatever the handler's closure holds (connections) would outlive the test."""
        self.server = None
        self.handler = None
        self.options = {}
        self.hub = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a raw client, independent of geventws --------------------------------------------


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: Optional[bytes] = b"\x37\xfa\x21\x3d",
    length: Optional[int] = None,
) -> bytes:
    """A frame as a client sends it; ``length`` overrides the encoded length."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload) if length is None else length
    mask_bit = 0x80 if mask is not None else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if mask is None:
        return header + payload
    return header + mask + xor(payload, mask)


def xor(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class RawPeer:
    """A WebSocket peer on a plain, already connected socket, with its own framing code:
    sends what well-behaved clients can't, and checks the bytes on the wire."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(max(65536, n - len(self.buffer)))
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        chunk, self.buffer = self.buffer[:n], self.buffer[n:]
        return chunk

    def read_frame(self) -> tuple[int, int, bytes]:
        """(first byte, opcode, payload) of the next server frame."""
        b0, b1 = self._read_exact(2)
        assert not b1 & 0x80, "server frames must not be masked"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        return b0, b0 & 0x0F, self._read_exact(length)

    def read_until_close(self) -> tuple[list[tuple[int, bytes]], Optional[int]]:
        """Read frames until a close frame or EOF: (data/pong frames, close code or None)."""
        frames: list[tuple[int, bytes]] = []
        try:
            while True:
                _, opcode, payload = self.read_frame()
                if opcode == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return frames, code
                frames.append((opcode, payload))
        except (EOFError, ConnectionResetError):
            return frames, None

    def wait_eof(self) -> bool:
        """Whether the server closes the TCP connection (before the socket timeout)."""
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (TimeoutError, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()


class RawClient(RawPeer):
    """A :class:`RawPeer` that opens its connection with an upgrade request."""

    def __init__(
        self, port: int, path: str = "/", headers: str = "", timeout: float = 10.0
    ) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head


def print_err(*args: Any) -> None:
    print(*args, file=sys.stderr)


#: The startup line of ``geventws serve`` (and of its supervisor and reloader): the port
#: on loopback, ``ws://`` or ``wss://``.
LISTENING = re.compile(r"listening on wss?://(?:127\.0\.0\.1|\[::1\]):(\d+)")


def start_serve_command(args: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``geventws serve ARGS --port 0`` with its log in ``log_path`` (a file, not
    a pipe: nobody has to drain it); return the process and the port it listens on."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "geventws", "serve", *args, "--port", "0"],
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    port = 0

    def listening() -> bool:
        nonlocal port
        match = LISTENING.search(log_path.read_text())
        port = int(match.group(1)) if match else 0
        return bool(port) or process.poll() is not None

    if not (wait_for(listening, timeout=30) and port):
        process.kill()
        process.wait()
        raise RuntimeError(f"geventws serve did not start: {log_path.read_text()}")
    return process, port


#: Close codes an endpoint may send (RFC 6455 §7.4), for tests on both sides.
SENDABLE_CLOSE_CODES = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
    3000, 3999, 4000, 4999,
]  # fmt: skip


class ThrowawayCA:
    """A throwaway certificate authority (trustme) and the contexts that use it."""

    def __init__(self, *hostnames: str) -> None:
        import ssl

        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(*(hostnames or ("127.0.0.1", "localhost")))
        #: A server context with the certificate.
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(self.server_context)
        #: A client context that trusts the authority (and verifies as usual).
        self.client_context = ssl.create_default_context()
        self.ca.configure_trust(self.client_context)
