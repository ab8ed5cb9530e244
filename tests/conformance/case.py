"""A conformance case (see cases.py) and the builders of the bytes a client sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..utils import client_frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
MiB = 2**20
#: The echo server for these cases runs with --max-size 16MiB.
SERVER_MAX_SIZE = 16 * MiB


@dataclass
class Case:
    id: str
    send: list[bytes]
    expect: list[tuple[int, bytes]] = field(default_factory=list)
    close: Optional[int] = 1000  # the code the server must close with
    #: Like Autobahn: once ``expect`` has arrived, send a close frame (1000) and expect
    #: it echoed. When false, the server must close by itself after ``send``.
    clean_close: bool = True


def frame(opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    return client_frame(opcode, payload, **kwargs)  # type: ignore[arg-type]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def bytewise(data: bytes) -> list[bytes]:
    return chunks(data, 1)


def failing(
    id: str, send: list[bytes], code: int, expect: Optional[list[tuple[int, bytes]]] = None
) -> Case:
    """The server must fail the connection with ``code`` (after echoing ``expect``)."""
    return Case(id, send, expect or [], close=code, clean_close=False)


def payload_of(size: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(256)) * (size // 256) + bytes(size % 256)


_TEXT_UNIT = "κόσμε €uro\n".encode()


def text_of(size: int) -> bytes:
    """Valid UTF-8 of exactly ``size`` bytes, with 2- and 3-byte sequences throughout."""
    unit = _TEXT_UNIT
    return unit * (size // len(unit)) + b"x" * (size % len(unit))
