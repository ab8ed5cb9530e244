"""Raw-socket WebSocket peers for the soak test: what well-behaved libraries won't send.

Framing and the handshake are written here, independently of geventws, so that the
server is checked against bytes, not against itself. Every socket has a timeout and
every wait a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from typing import Optional

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: Optional[int] = None,
) -> bytes:
    """A client frame; ``length`` overrides the length in the header (to lie)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    if payload:
        n = len(payload)
        stream = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            n, "big"
        )
    return head + key + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


class Closed(Exception):
    """The server closed the TCP connection (EOF or reset)."""


class RawSocket:
    """A connected socket with a receive buffer: ``timeout`` bounds connecting and each
    send, a deadline each read."""

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: Optional[int] = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connected = False
        try:
            if rcvbuf is not None:  # before connecting, so the window starts small
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))
            connected = True
        finally:
            if not connected:
                self.sock.close()
        self.port = port
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed("connection closed by the server")
        self.buffer += data

    def read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            self._fill(deadline)
        chunk, self.buffer = self.buffer[:n], self.buffer[n:]
        return chunk

    def read_head(self, deadline: float) -> bytes:
        """An HTTP head (up to the blank line)."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill(deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def read_frame(self, deadline: float) -> tuple[int, bytes]:
        """(opcode, payload) of the server's next frame (server frames are unmasked)."""
        b0, b1 = self.read_exact(2, deadline)
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        size = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.read_exact(2, deadline))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.read_exact(8, deadline))
        return b0 & 0x0F, self.read_exact(size, deadline)

    def close_code(self, deadline: float) -> Optional[int]:
        """Skip data frames until the server's close frame: its code (1005 without one),
        or ``None`` when TCP closed first."""
        try:
            while True:
                opcode, payload = self.read_frame(deadline)
                if opcode == CLOSE:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except Closed:
            return None

    def wait_eof(self, deadline: float) -> bool:
        """Read and discard until the server closes TCP; False at the deadline."""
        self.buffer = b""
        try:
            while True:
                self._fill(deadline)
                self.buffer = b""
        except Closed:
            return True
        except TimeoutError:
            return False

    def status(self, deadline: float) -> Optional[int]:
        """The HTTP status the server answered, or ``None`` if it closed first."""
        try:
            head = self.read_head(deadline)
        except Closed:
            return None
        return int(head.split(b" ", 2)[1])

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def upgrade_request(
    port: int, path: str = "/echo", key: Optional[str] = None, extra: str = ""
) -> tuple[bytes, str]:
    """A valid upgrade request (no extension offered) and its key."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    )
    return request.encode(), key


def open_raw(
    port: int, path: str = "/echo", timeout: float = 10.0, rcvbuf: Optional[int] = None
) -> RawSocket:
    """A raw WebSocket connection, its 101 checked (status and accept key)."""
    raw = RawSocket(port, timeout, rcvbuf)
    opened = False
    try:
        request, key = upgrade_request(port, path)
        raw.send(request)
        head = raw.read_head(time.monotonic() + timeout)
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        lines = head.split(b"\r\n")
        if b" 101 " not in lines[0] + b" ":
            raise AssertionError(f"expected 101, got {lines[0]!r}")
        if not any(line.lower() == b"sec-websocket-accept: " + accept.lower() for line in lines):
            raise AssertionError("wrong Sec-WebSocket-Accept")
        opened = True
    finally:
        if not opened:
            raw.close()
    return raw
