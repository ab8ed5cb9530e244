"""Fuzz target: the client side of the protocol state machine, without
extensions (invariants in :mod:`tests.fuzz.protocol_target`)."""

from __future__ import annotations

from .common import instrumented, main

with instrumented(__name__ == "__main__"):
    from geventws.core.protocol import Side

    from .protocol_target import run


def TestOneInput(data: bytes) -> None:
    run(data, Side.CLIENT, with_deflate=False)


if __name__ == "__main__":
    main(TestOneInput)
