"""An independent, deliberately small WebSocket frame writer and reader for the tests.

Written from RFC 6455 §5 and RFC 7692 §7 without geventws' code, so that what the
protocol sends is checked by a second implementation: :class:`OutputChecker` reads a
stream of frames and fails an assertion on anything a conforming peer would reject
(and on a frame length in a longer encoding than needed, which the RFC forbids).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple, Optional, Union

__all__ = ["CONT", "TEXT", "BINARY", "CLOSE", "PING", "PONG", "Frame", "OutputChecker"]
__all__ += ["build_frame", "close_payload", "mask_bytes"]

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CONTROL = (CLOSE, PING, PONG)
_TAIL = b"\x00\x00\xff\xff"


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated."""
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: Optional[bytes] = None,
) -> bytes:
    """One frame; ``rsv`` is the three RSV bits as a number 0-7 (4 is RSV1)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size <= 125:
        head = bytes([first, mask_bit | size])
    elif size <= 0xFFFF:
        head = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + mask_bytes(payload, mask)


def close_payload(code: Optional[int], reason: bytes = b"") -> bytes:
    return b"" if code is None else code.to_bytes(2, "big") + reason


def _valid_close_code(code: int) -> bool:
    return code in range(1000, 1004) or code in range(1007, 1015) or code in range(3000, 5000)


class Frame(NamedTuple):
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes


Message = Union[str, bytes]


class OutputChecker:
    """Reads what one side sends and asserts it is a valid frame stream.

    ``masked``: whether frames must be masked (a client's). ``window_bits``: the
    window the sender may compress with, or None when it may not compress at all;
    ``fresh_context`` when it must reset its compressor after each message.
    Completed messages collect in :attr:`messages`; every frame in :attr:`frames`.
    """

    def __init__(
        self, *, masked: bool, window_bits: Optional[int] = None, fresh_context: bool = False
    ) -> None:
        self.masked = masked
        self.window_bits = window_bits
        self.fresh_context = fresh_context
        self.frames: list[Frame] = []
        self.messages: list[Message] = []
        self.closed = False
        self._buffer = b""
        self._opcode: Optional[int] = None
        self._compressed = False
        self._parts: list[bytes] = []
        self._inflater: Optional[zlib._Decompress] = None

    @property
    def partial(self) -> bool:
        """Whether the stream so far ends inside a frame."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Read ``data``; return the frames it completed (all checked)."""
        self._buffer += data
        frames = []
        while True:
            frame = self._next_frame()
            if frame is None:
                break
            self._check(frame)
            frames.append(frame)
            self.frames.append(frame)
        return frames

    def _next_frame(self) -> Optional[Frame]:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        size = second & 0x7F
        pos = 2
        if size == 126:
            if len(buf) < 4:
                return None
            size = int.from_bytes(buf[2:4], "big")
            assert size > 125, "16-bit length used for a length under 126"
            pos = 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size = int.from_bytes(buf[2:10], "big")
            assert size >> 63 == 0, "64-bit length with the top bit set"
            assert size > 0xFFFF, "64-bit length used for a length under 65536"
            pos = 10
        is_masked = bool(second & 0x80)
        assert is_masked is self.masked, f"frame masked={is_masked}, expected {self.masked}"
        key = b""
        if is_masked:
            if len(buf) < pos + 4:
                return None
            key = buf[pos : pos + 4]
            pos += 4
        if len(buf) < pos + size:
            return None
        payload = buf[pos : pos + size]
        if is_masked:
            payload = mask_bytes(payload, key)
        self._buffer = buf[pos + size :]
        assert first & 0x30 == 0, f"RSV2/RSV3 set: {first:#04x}"
        return Frame(bool(first & 0x80), bool(first & 0x40), first & 0x0F, payload)

    def _check(self, frame: Frame) -> None:
        assert not self.closed, f"frame sent after a close frame: {frame}"
        opcode = frame.opcode
        if opcode in _CONTROL:
            assert frame.fin, "fragmented control frame"
            assert not frame.rsv1, "RSV1 on a control frame"
            assert len(frame.payload) <= 125, "control frame over 125 bytes"
            if opcode == CLOSE:
                self._check_close(frame.payload)
                self.closed = True
            return
        assert opcode in (CONT, TEXT, BINARY), f"reserved opcode {opcode}"
        if opcode == CONT:
            assert self._opcode is not None, "continuation without a message"
            assert not frame.rsv1, "RSV1 on a continuation frame"
        else:
            assert self._opcode is None, "new message inside a fragmented one"
            self._opcode = opcode
            self._compressed = frame.rsv1
            if frame.rsv1:
                assert self.window_bits is not None, "RSV1 without permessage-deflate"
        self._parts.append(frame.payload)
        if frame.fin:
            self._finish()

    def _finish(self) -> None:
        data = b"".join(self._parts)
        if self._compressed:
            data = self._inflate(data)
        opcode = self._opcode
        self._opcode = None
        self._parts = []
        if opcode == TEXT:
            try:
                self.messages.append(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise AssertionError(f"text message is not UTF-8: {data!r}") from exc
        else:
            self.messages.append(data)

    def _inflate(self, data: bytes) -> bytes:
        assert self.window_bits is not None
        inflater = self._inflater
        if inflater is None or self.fresh_context:
            # Exactly the negotiated window: a reference farther back fails here.
            inflater = zlib.decompressobj(-self.window_bits)
        try:
            out = inflater.decompress(data + _TAIL)
        except zlib.error as exc:
            raise AssertionError(f"compressed message does not inflate: {exc}") from exc
        assert not inflater.unused_data and not inflater.eof, "deflate stream ended"
        self._inflater = inflater
        return out

    @staticmethod
    def _check_close(payload: bytes) -> None:
        if not payload:
            return
        assert len(payload) >= 2, "close payload of 1 byte"
        code = int.from_bytes(payload[:2], "big")
        assert _valid_close_code(code), f"close code {code} may not be sent"
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssertionError("close reason is not UTF-8") from exc
