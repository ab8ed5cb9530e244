"""Conformance cases of Autobahn's category 6: UTF-8 in text messages, whole,
fragmented at every byte and in frames of every size, valid and invalid."""

from __future__ import annotations

import struct

from .case import BINARY, CLOSE, CONT, TEXT, Case, bytewise, failing, frame

VALID_UTF8 = [
    ("kosme", "κόσμε".encode()),
    ("first-1", b"\x00"),
    ("first-2", b"\xc2\x80"),
    ("first-3", b"\xe0\xa0\x80"),
    ("first-4", b"\xf0\x90\x80\x80"),
    ("last-1", b"\x7f"),
    ("last-2", b"\xdf\xbf"),
    ("last-3", b"\xef\xbf\xbf"),
    ("last-4", b"\xf4\x8f\xbf\xbf"),
    ("boundary-d7ff", b"\xed\x9f\xbf"),
    ("boundary-e000", b"\xee\x80\x80"),
    ("boundary-fffd", b"\xef\xbf\xbd"),
    ("noncharacter-fffe", b"\xef\xbf\xbe"),
    ("noncharacter-ffff", b"\xef\xbf\xbf"),
    ("noncharacter-1fffe", b"\xf0\x9f\xbf\xbe"),
    ("noncharacter-10ffff", b"\xf4\x8f\xbf\xbf"),
    ("mixed", "Hello-µ@ßöäüàá-UTF-8!!".encode()),
    ("emoji", "🐍 and 𝄞".encode()),
    ("bom", b"\xef\xbb\xbfbom"),
]

INVALID_UTF8 = [
    ("kosme-surrogate", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
    ("beyond-10ffff", b"\xf4\x90\x80\x80"),
    ("five-bytes", b"\xf8\x88\x80\x80\x80"),
    ("six-bytes", b"\xfc\x84\x80\x80\x80\x80"),
    ("last-five", b"\xfb\xbf\xbf\xbf\xbf"),
    ("last-six", b"\xfd\xbf\xbf\xbf\xbf\xbf"),
    ("continuation-80", b"\x80"),
    ("continuation-bf", b"\xbf"),
    ("continuation-80bf", b"\x80\xbf"),
    ("continuation-80bf80", b"\x80\xbf\x80"),
    ("continuation-all", bytes(range(0x80, 0xC0))),
    ("lonely-c0", b"\xc0 "),
    ("lonely-df", b"\xdf "),
    ("lonely-e0", b"\xe0 "),
    ("lonely-ef", b"\xef "),
    ("lonely-f0", b"\xf0 "),
    ("lonely-f7", b"\xf7 "),
    ("lonely-f8", b"\xf8 "),
    ("lonely-fc", b"\xfc "),
    ("missing-last-2", b"\xc0"),
    ("missing-last-3", b"\xe0\x80"),
    ("missing-last-4", b"\xf0\x80\x80"),
    ("missing-last-df", b"\xdf"),
    ("missing-last-efbf", b"\xef\xbf"),
    ("missing-last-f7bfbf", b"\xf7\xbf\xbf"),
    (
        "concatenated-incomplete",
        b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf",
    ),
    ("impossible-fe", b"\xfe"),
    ("impossible-ff", b"\xff"),
    ("impossible-fefeffff", b"\xfe\xfe\xff\xff"),
    ("overlong-slash-2", b"\xc0\xaf"),
    ("overlong-slash-3", b"\xe0\x80\xaf"),
    ("overlong-slash-4", b"\xf0\x80\x80\xaf"),
    ("overlong-max-2", b"\xc1\xbf"),
    ("overlong-max-3", b"\xe0\x9f\xbf"),
    ("overlong-max-4", b"\xf0\x8f\xbf\xbf"),
    ("overlong-nul-2", b"\xc0\x80"),
    ("overlong-nul-3", b"\xe0\x80\x80"),
    ("overlong-nul-4", b"\xf0\x80\x80\x80"),
    ("surrogate-d800", b"\xed\xa0\x80"),
    ("surrogate-db7f", b"\xed\xad\xbf"),
    ("surrogate-db80", b"\xed\xae\x80"),
    ("surrogate-dbff", b"\xed\xaf\xbf"),
    ("surrogate-dc00", b"\xed\xb0\x80"),
    ("surrogate-df80", b"\xed\xbe\x80"),
    ("surrogate-dfff", b"\xed\xbf\xbf"),
    ("surrogate-pair-1", b"\xed\xa0\x80\xed\xb0\x80"),
    ("surrogate-pair-2", b"\xed\xaf\xbf\xed\xbf\xbf"),
    ("after-valid-text", "κόσμε".encode() + b"\xff" + b"tail"),
]


def utf8() -> list[Case]:
    cases = [
        Case("6.1.empty-text", [frame(TEXT)], [(TEXT, b"")]),
        Case(
            "6.1.empty-fragments",
            [frame(TEXT, b"", fin=False), frame(CONT, b"", fin=False), frame(CONT, b"")],
            [(TEXT, b"")],
        ),
        Case(
            "6.1.empty-fragments-then-text",
            [
                frame(TEXT, b"", fin=False),
                frame(CONT, b"", fin=False),
                frame(CONT, b"middle"),
                frame(TEXT),
            ],
            [(TEXT, b"middle"), (TEXT, b"")],
        ),
    ]
    for name, data in VALID_UTF8:
        cases.append(Case(f"6.2.{name}-one-frame", [frame(TEXT, data)], [(TEXT, data)]))
        # Every byte its own fragment: sequences split at every byte.
        fragments = [
            frame(TEXT if i == 0 else CONT, data[i : i + 1], fin=i == len(data) - 1)
            for i in range(len(data))
        ]
        cases.append(Case(f"6.2.{name}-fragment-per-byte", fragments, [(TEXT, data)]))
        for split in range(1, len(data)):
            two = [frame(TEXT, data[:split], fin=False), frame(CONT, data[split:])]
            cases.append(Case(f"6.3.{name}-split-at-{split}", two, [(TEXT, data)]))
        cases.append(Case(f"6.4.{name}-bytewise-wire", bytewise(frame(TEXT, data)), [(TEXT, data)]))
    for name, data in INVALID_UTF8:
        cases.append(failing(f"6.5.{name}-one-frame", [frame(TEXT, data)], 1007))
        fragments = [
            frame(TEXT if i == 0 else CONT, data[i : i + 1], fin=i == len(data) - 1)
            for i in range(len(data))
        ]
        cases.append(failing(f"6.6.{name}-fragment-per-byte", fragments, 1007))
        cases.append(failing(f"6.7.{name}-bytewise-wire", bytewise(frame(TEXT, data)), 1007))
        cases.append(
            failing(
                f"6.8.{name}-in-close-reason", [frame(CLOSE, struct.pack("!H", 1000) + data)], 1007
            )
        )
    # Fail fast: the invalid byte arrives in a first fragment, the message never ends.
    cases.append(
        failing(
            "6.9.fail-fast-unfinished-message", [frame(TEXT, b"ok\xed\xa0\x80", fin=False)], 1007
        )
    )
    cases.append(
        failing(
            "6.9.fail-fast-before-more-fragments",
            [frame(TEXT, "κόσμε".encode(), fin=False), frame(CONT, b"\xf4\x90\x80\x80", fin=False)],
            1007,
        )
    )
    cases.append(
        Case(
            "6.10.binary-is-not-utf8-checked",
            [frame(BINARY, b"\xff\xfe\xed\xa0\x80")],
            [(BINARY, b"\xff\xfe\xed\xa0\x80")],
        )
    )
    return cases
