"""Compressed conformance cases modelled on Autobahn's categories 12 and 13.

12 · permessage-deflate with the default offer, five kinds of payload (compressible
text, compressible binary, varied text, structured binary, random bytes) at sizes from
16 bytes to 128 KiB, whole or in 256-byte fragments.
13 · the same with different parameter sets in the offer, including offers the server
must decline (a window of 8 bits) and several offers in one header.

The client side is the standard library's zlib, driven here: each message is
compressed (context takeover as negotiated) and sent; the server's echo must inflate to
the same message, compressed whenever it is 128 bytes or more (the CLI's default
threshold) and compression was agreed.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Optional

TEXT, BINARY = 1, 2
PMD = "permessage-deflate"
SIZES = [16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072]
FRAGMENT = 256
_WORDS = "alpha beta gamma delta epsilon κόσμε €uro zeta eta theta".split()
_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. "
).split()


@dataclass
class DeflateCase:
    id: str
    offer: str
    #: The ``Sec-WebSocket-Extensions`` the server must answer with; None: declined.
    agreed: Optional[str]
    #: The kind of payload (1-5, as in Autobahn's 12.1-12.5) and its size.
    kind: int
    size: int
    #: 0: each message in one frame; else compressed payloads cut in frames this big.
    fragment: int = 0

    def messages(self) -> list[tuple[int, bytes]]:
        """Many small messages, a few big ones (about 256 KiB a case), made on demand."""
        count = max(2, min(40, 2**18 // self.size))
        return [payload(self.kind, self.size, seed) for seed in range(count)]


_SMALL_ALPHABET = bytes(b"\x00\x01\x02\x03\xfe\xff"[i % 6] for i in range(256))


def _utf8_of(size: int, words: list[str], rng: random.Random) -> bytes:
    out = bytearray()
    while len(out) < size:
        out += (rng.choice(words) + " ").encode()
    data = bytes(out[:size])
    return data.decode("utf-8", "ignore").encode().ljust(size, b".")


def payload(kind: int, size: int, seed: int) -> tuple[int, bytes]:
    rng = random.Random(size * 31 + seed)
    if kind == 1:
        return TEXT, _utf8_of(size, _WORDS, rng)
    if kind == 2:
        return BINARY, rng.randbytes(size).translate(_SMALL_ALPHABET)
    if kind == 3:
        return TEXT, _utf8_of(size, [w + str(rng.randrange(100)) for w in _LOREM], rng)
    if kind == 4:
        records = b"".join(struct.pack("!IHd", i, i % 7, i / 3) for i in range(size // 14 + 1))
        return BINARY, records[:size]
    return BINARY, rng.randbytes(size)


def compression_cases() -> list[DeflateCase]:
    cases = []
    for kind in range(1, 6):
        for index, size in enumerate(SIZES, 1):
            cases.append(DeflateCase(f"12.{kind}.{index}", PMD, PMD, kind, size))
        for index, size in enumerate(SIZES[3:], len(SIZES) + 1):
            cases.append(
                DeflateCase(
                    f"12.{kind}.{index}-frag{FRAGMENT}",
                    PMD,
                    PMD,
                    kind,
                    size,
                    fragment=FRAGMENT,
                )
            )
    return cases


#: Offer → agreed, modelled on Autobahn's 13.1-13.7 parameter sets.
PARAMETER_SETS: list[tuple[str, Optional[str]]] = [
    (PMD, PMD),
    (f"{PMD}; server_no_context_takeover", f"{PMD}; server_no_context_takeover"),
    (f"{PMD}; client_max_window_bits; server_max_window_bits=8", None),
    (
        f"{PMD}; client_max_window_bits; server_max_window_bits=15",
        f"{PMD}; server_max_window_bits=12; client_max_window_bits=12",
    ),
    (f"{PMD}; server_no_context_takeover; server_max_window_bits=8", None),
    (
        f"{PMD}; client_no_context_takeover; server_no_context_takeover; "
        "server_max_window_bits=15; client_max_window_bits=9",
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=12; client_max_window_bits=9",
    ),
    (
        f"{PMD}; server_max_window_bits=8, {PMD}; server_no_context_takeover; "
        f"client_max_window_bits=10, {PMD}",
        f"{PMD}; server_no_context_takeover; client_max_window_bits=10",
    ),
]


def parameter_cases() -> list[DeflateCase]:
    cases = []
    for number, (offer, agreed) in enumerate(PARAMETER_SETS, 1):
        for index, size in enumerate(SIZES, 1):
            kind = 1 if index % 2 else 4
            cases.append(DeflateCase(f"13.{number}.{index}", offer, agreed, kind, size))
        for index, size in enumerate((4096, 65536), len(SIZES) + 1):
            cases.append(
                DeflateCase(
                    f"13.{number}.{index}-frag{FRAGMENT}",
                    offer,
                    agreed,
                    3,
                    size,
                    fragment=FRAGMENT,
                )
            )
    return cases


def all_deflate_cases() -> list[DeflateCase]:
    cases = compression_cases() + parameter_cases()
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases
