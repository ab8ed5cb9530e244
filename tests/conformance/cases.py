"""Conformance cases modelled on the Autobahn testsuite's public case categories.

Each :class:`Case` is a list of byte strings a client sends (each one ``sendall`` of its
own, so frames arrive cut at arbitrary places), the frames an echo server must answer
with, and the close code it must end with. Categories follow Autobahn's numbering:

1 framing · 2 ping/pong · 3 reserved bits · 4 opcodes · 5 fragmentation · 6 UTF-8
(utf8_cases.py) · 7 close · 9 limits · 10 auto-fragmentation

A case that ends normally waits for the echoes, then sends a close frame (1000) and
expects it echoed. Frames are built by :func:`tests.utils.client_frame` (through
case.py), not by geventws.
"""

from __future__ import annotations

import struct

from ..utils import SENDABLE_CLOSE_CODES
from .case import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    SERVER_MAX_SIZE,
    TEXT,
    Case,
    MiB,
    bytewise,
    chunks,
    failing,
    frame,
    payload_of,
    text_of,
)
from .utf8_cases import utf8

__all__ = ["Case", "all_cases"]


# -- 1 framing -------------------------------------------------------------------------


def framing() -> list[Case]:
    cases = []
    sizes = [0, 1, 125, 126, 127, 128, 65535, 65536]
    for opcode, kind in ((TEXT, "text"), (BINARY, "binary")):
        for size in sizes:
            data = text_of(size) if opcode == TEXT else payload_of(size)
            cases.append(Case(f"1.{opcode}.{kind}-{size}", [frame(opcode, data)], [(opcode, data)]))
        data = text_of(65536) if opcode == TEXT else payload_of(65536)
        cases.append(
            Case(
                f"1.{opcode}.{kind}-65536-chunked-997",
                chunks(frame(opcode, data), 997),
                [(opcode, data)],
            )
        )
        small = b"hello" if opcode == TEXT else b"\x00\xff\x10"
        cases.append(
            Case(f"1.{opcode}.{kind}-bytewise", bytewise(frame(opcode, small)), [(opcode, small)])
        )
    cases.append(
        Case(
            "1.3.zero-mask",
            [frame(TEXT, b"masked with zeros", mask=b"\x00" * 4)],
            [(TEXT, b"masked with zeros")],
        )
    )
    cases.append(failing("1.4.unmasked-text", [frame(TEXT, b"x", mask=None)], 1002))
    cases.append(failing("1.4.unmasked-binary", [frame(BINARY, b"x", mask=None)], 1002))
    cases.append(failing("1.4.unmasked-ping", [frame(PING, b"x", mask=None)], 1002))
    cases.append(
        failing(
            "1.4.unmasked-after-valid",
            [frame(TEXT, b"ok"), frame(TEXT, b"x", mask=None)],
            1002,
            [(TEXT, b"ok")],
        )
    )
    cases.append(
        failing(
            "1.5.length-msb-set",
            [b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x01" + b"\x00" * 4],
            1002,
        )
    )
    many = [frame(TEXT, str(i).encode()) for i in range(100)]
    cases.append(
        Case(
            "1.6.hundred-frames-one-write",
            [b"".join(many)],
            [(TEXT, str(i).encode()) for i in range(100)],
        )
    )
    return cases


# -- 2 ping/pong -------------------------------------------------------------------------


def pings() -> list[Case]:
    return [
        Case("2.1.ping-empty", [frame(PING)], [(PONG, b"")]),
        Case("2.2.ping-text", [frame(PING, b"Hello, world!")], [(PONG, b"Hello, world!")]),
        Case(
            "2.3.ping-binary",
            [frame(PING, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")],
            [(PONG, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")],
        ),
        Case("2.4.ping-125", [frame(PING, b"\xfe" * 125)], [(PONG, b"\xfe" * 125)]),
        failing("2.5.ping-126", [frame(PING, b"\xfe" * 126)], 1002),
        Case(
            "2.6.ping-125-bytewise", bytewise(frame(PING, b"\xfe" * 125)), [(PONG, b"\xfe" * 125)]
        ),
        Case("2.7.unsolicited-pong-empty", [frame(PONG)], []),
        Case("2.8.unsolicited-pong-payload", [frame(PONG, b"unsolicited")], []),
        Case(
            "2.9.pong-then-ping",
            [frame(PONG, b"unsolicited"), frame(PING, b"ping")],
            [(PONG, b"ping")],
        ),
        Case(
            "2.10.ten-pings",
            [frame(PING, b"p%d" % i) for i in range(10)],
            [(PONG, b"p%d" % i) for i in range(10)],
        ),
        Case(
            "2.11.ten-pings-bytewise",
            [piece for i in range(10) for piece in bytewise(frame(PING, b"p%d" % i))],
            [(PONG, b"p%d" % i) for i in range(10)],
        ),
        failing("2.12.pong-126", [frame(PONG, b"x" * 126)], 1002),
        failing("2.13.close-126", [frame(CLOSE, struct.pack("!H", 1000) + b"x" * 124)], 1002),
    ]


# -- 3 reserved bits ---------------------------------------------------------------------


def reserved_bits() -> list[Case]:
    cases = []
    for rsv in range(1, 8):
        for opcode, name, payload in (
            (TEXT, "text", b"Hello"),
            (BINARY, "binary", b"\x00\xff"),
            (PING, "ping", b"p"),
            (PONG, "pong", b"p"),
            (CLOSE, "close", struct.pack("!H", 1000)),
        ):
            bad = frame(opcode, payload, rsv=rsv)
            cases.append(failing(f"3.{rsv}.{name}", [bad], 1002))
        cases.append(
            failing(
                f"3.{rsv}.after-valid-then-ping",
                [frame(TEXT, b"valid"), frame(TEXT, b"bad", rsv=rsv), frame(PING, b"unanswered")],
                1002,
                [(TEXT, b"valid")],
            )
        )
        cases.append(
            failing(
                f"3.{rsv}.bytewise",
                bytewise(frame(TEXT, b"valid") + frame(TEXT, b"bad", rsv=rsv) + frame(PING)),
                1002,
                [(TEXT, b"valid")],
            )
        )
        cases.append(
            failing(
                f"3.{rsv}.on-continuation",
                [frame(TEXT, b"a", fin=False), frame(CONT, b"b", rsv=rsv)],
                1002,
            )
        )
    return cases


# -- 4 opcodes ---------------------------------------------------------------------------


def opcodes() -> list[Case]:
    cases = []
    for opcode in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
        cases.append(failing(f"4.{opcode}.alone", [frame(opcode)], 1002))
        cases.append(failing(f"4.{opcode}.with-payload", [frame(opcode, b"reserved")], 1002))
        cases.append(
            failing(
                f"4.{opcode}.after-valid",
                [frame(TEXT, b"ok"), frame(opcode, b"x"), frame(PING)],
                1002,
                [(TEXT, b"ok")],
            )
        )
    return cases


# -- 5 fragmentation ---------------------------------------------------------------------


def fragmentation() -> list[Case]:
    two = [frame(TEXT, b"fragment1", fin=False), frame(CONT, b"fragment2")]
    with_ping = [
        frame(TEXT, b"fragment1", fin=False),
        frame(PING, b"pong me"),
        frame(CONT, b"fragment2"),
    ]
    cases = [
        failing("5.1.ping-fragmented", [frame(PING, b"a", fin=False), frame(CONT, b"b")], 1002),
        failing("5.2.pong-fragmented", [frame(PONG, b"a", fin=False), frame(CONT, b"b")], 1002),
        failing(
            "5.2.close-fragmented", [frame(CLOSE, b"\x03\xe8", fin=False), frame(CONT, b"b")], 1002
        ),
        Case("5.3.text-two-fragments", two, [(TEXT, b"fragment1fragment2")]),
        Case("5.4.text-two-fragments-chunked", [b"".join(two)], [(TEXT, b"fragment1fragment2")]),
        Case(
            "5.5.text-two-fragments-bytewise",
            bytewise(b"".join(two)),
            [(TEXT, b"fragment1fragment2")],
        ),
        Case(
            "5.6.ping-between-fragments",
            with_ping,
            [(PONG, b"pong me"), (TEXT, b"fragment1fragment2")],
        ),
        Case(
            "5.7.ping-between-fragments-chunked",
            [b"".join(with_ping)],
            [(PONG, b"pong me"), (TEXT, b"fragment1fragment2")],
        ),
        Case(
            "5.8.ping-between-fragments-bytewise",
            bytewise(b"".join(with_ping)),
            [(PONG, b"pong me"), (TEXT, b"fragment1fragment2")],
        ),
        Case(
            "5.8.binary-fragments-with-pong",
            [
                frame(BINARY, b"\x01", fin=False),
                frame(PONG, b"x"),
                frame(CONT, b"\x02", fin=False),
                frame(CONT, b"\x03"),
            ],
            [(BINARY, b"\x01\x02\x03")],
        ),
    ]
    for variant, pieces in (("whole", None), ("chunked", 1), ("bytewise", 2)):
        for fin in (True, False):
            data = frame(CONT, b"non-continuation payload", fin=fin) + frame(TEXT, b"Hello, world!")
            send = (
                [data] if pieces is None else (chunks(data, 5) if pieces == 1 else bytewise(data))
            )
            cases.append(
                failing(f"5.9.continuation-without-start-fin{int(fin)}-{variant}", send, 1002)
            )
        data = (
            frame(TEXT, b"fragment1", fin=False)
            + frame(CONT, b"fragment2")
            + frame(CONT, b"fragment3")
        )
        send = [data] if pieces is None else (chunks(data, 5) if pieces == 1 else bytewise(data))
        cases.append(
            failing(
                f"5.15.continuation-after-end-{variant}",
                send,
                1002,
                [(TEXT, b"fragment1fragment2")],
            )
        )
        data = frame(TEXT, b"fragment1", fin=False) + frame(TEXT, b"fragment2")
        send = [data] if pieces is None else (chunks(data, 5) if pieces == 1 else bytewise(data))
        cases.append(failing(f"5.18.text-inside-fragmented-{variant}", send, 1002))
        data = frame(BINARY, b"a", fin=False) + frame(TEXT, b"b", fin=False)
        send = [data] if pieces is None else (chunks(data, 5) if pieces == 1 else bytewise(data))
        cases.append(failing(f"5.18.binary-then-text-start-{variant}", send, 1002))
    five = [
        frame(TEXT, b"f1", fin=False),
        frame(CONT, b"f2", fin=False),
        frame(PING, b"p1"),
        frame(CONT, b"f3", fin=False),
        frame(CONT, b"f4", fin=False),
        frame(PING, b"p2"),
        frame(CONT, b"f5"),
    ]
    cases.append(
        Case(
            "5.19.five-fragments-two-pings",
            five,
            [(PONG, b"p1"), (PONG, b"p2"), (TEXT, b"f1f2f3f4f5")],
        )
    )
    cases.append(
        Case(
            "5.20.five-fragments-two-pings-bytewise",
            bytewise(b"".join(five)),
            [(PONG, b"p1"), (PONG, b"p2"), (TEXT, b"f1f2f3f4f5")],
        )
    )
    cases.append(
        Case(
            "5.21.empty-fragments",
            [frame(TEXT, b"", fin=False), frame(CONT, b"", fin=False), frame(CONT, b"")],
            [(TEXT, b"")],
        )
    )
    cases.append(
        Case(
            "5.22.many-small-fragments",
            [frame(BINARY, b"x", fin=False)]
            + [frame(CONT, b"x", fin=False)] * 998
            + [frame(CONT, b"x")],
            [(BINARY, b"x" * 1000)],
        )
    )
    return cases


# -- 7 close ----------------------------------------------------------------------------


def closing() -> list[Case]:
    def close(code: int, reason: bytes = b"") -> bytes:
        return frame(CLOSE, struct.pack("!H", code) + reason)

    cases = [
        Case("7.1.1.echo-then-close", [frame(TEXT, b"Hello")], [(TEXT, b"Hello")]),
        Case("7.1.2.close-twice", [close(1000), close(1000)], [], close=1000, clean_close=False),
        Case(
            "7.1.3.ping-after-close",
            [close(1000), frame(PING, b"ignored")],
            [],
            close=1000,
            clean_close=False,
        ),
        Case(
            "7.1.4.text-after-close",
            [close(1000), frame(TEXT, b"ignored")],
            [],
            close=1000,
            clean_close=False,
        ),
        Case(
            "7.1.5.fragment-then-close",
            [frame(TEXT, b"frag", fin=False), close(1000), frame(CONT, b"ignored")],
            [],
            close=1000,
            clean_close=False,
        ),
        Case(
            "7.1.6.large-message-then-close",
            [frame(TEXT, text_of(262144))],
            [(TEXT, text_of(262144))],
        ),
        Case("7.3.1.close-empty-payload", [frame(CLOSE)], [], close=1005, clean_close=False),
        failing("7.3.2.close-one-byte", [frame(CLOSE, b"\x03")], 1002),
        Case("7.3.3.close-code-only", [close(1000)], [], close=1000, clean_close=False),
        Case(
            "7.3.4.close-code-reason",
            [close(1000, b"Hello World!")],
            [],
            close=1000,
            clean_close=False,
        ),
        Case(
            "7.3.5.close-123-byte-reason",
            [close(1000, b"*" * 123)],
            [],
            close=1000,
            clean_close=False,
        ),
        failing("7.3.6.close-124-byte-reason", [close(1000, b"*" * 124)], 1002),
        failing(
            "7.5.1.close-reason-invalid-utf8",
            [close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited")],
            1007,
        ),
    ]
    for code in SENDABLE_CLOSE_CODES:
        cases.append(
            Case(f"7.7.valid-code-{code}", [close(code)], [], close=code, clean_close=False)
        )
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
        cases.append(failing(f"7.9.invalid-code-{code}", [close(code)], 1002))
    return cases


# -- 9 limits ---------------------------------------------------------------------------


def limits() -> list[Case]:
    cases = []
    for size in (65536, 262144, MiB, 4 * MiB, 8 * MiB, 16 * MiB):
        text = text_of(size)
        cases.append(Case(f"9.1.text-{size}", chunks(frame(TEXT, text), 65536), [(TEXT, text)]))
        data = payload_of(size)
        cases.append(
            Case(f"9.2.binary-{size}", chunks(frame(BINARY, data), 65536), [(BINARY, data)])
        )
    for fragment in (64, 256, 1024, 4096, 16384, 65536, 262144, MiB):
        data = payload_of(MiB, fragment)
        pieces = chunks(data, fragment)
        frames = [
            frame(BINARY if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        ]
        cases.append(
            Case(
                f"9.3.binary-1MiB-in-{fragment}-byte-fragments",
                [b"".join(frames)],
                [(BINARY, data)],
            )
        )
    text = text_of(4 * MiB)
    pieces = chunks(text, MiB)
    frames = [
        frame(TEXT if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
    cases.append(Case("9.4.text-4MiB-in-1MiB-fragments", frames, [(TEXT, text)]))
    for chunk in (64, 4096, 65536):
        data = payload_of(MiB, chunk)
        cases.append(
            Case(
                f"9.5.binary-1MiB-written-in-{chunk}-byte-chunks",
                chunks(frame(BINARY, data), chunk),
                [(BINARY, data)],
            )
        )
    many = [frame(BINARY, b"m%d" % i) for i in range(1000)]
    cases.append(
        Case(
            "9.7.thousand-small-messages",
            [b"".join(many)],
            [(BINARY, b"m%d" % i) for i in range(1000)],
        )
    )
    too_big = SERVER_MAX_SIZE + 1
    cases.append(
        failing("9.8.over-max-size-one-frame", [frame(BINARY, b"", length=too_big)[:14]], 1009)
    )
    cases.append(
        failing(
            "9.8.over-max-size-fragmented",
            [
                frame(BINARY, b"x" * (8 * MiB), fin=False),
                frame(CONT, b"x" * (8 * MiB), fin=False),
                frame(CONT, b"x"),
            ],
            1009,
        )
    )
    return cases


# -- 10 auto-fragmentation ----------------------------------------------------------------


def autofragmentation() -> list[Case]:
    cases = []
    for opcode, name in ((TEXT, "text"), (BINARY, "binary")):
        data = text_of(65536) if opcode == TEXT else payload_of(65536)
        pieces = chunks(data, 1300)
        frames = [
            frame(opcode if i == 0 else CONT, p, fin=i == len(pieces) - 1)
            for i, p in enumerate(pieces)
        ]
        cases.append(Case(f"10.1.{name}-65536-in-1300-byte-fragments", frames, [(opcode, data)]))
    return cases


def all_cases() -> list[Case]:
    cases = (
        framing()
        + pings()
        + reserved_bits()
        + opcodes()
        + fragmentation()
        + utf8()
        + closing()
        + limits()
        + autofragmentation()
    )
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases
