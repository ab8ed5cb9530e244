"""What the protocol reports, and the values it is described by: sides, states, events.

Events are deliberately cheap, since one is made per message on the hot path: a ``str``
is a complete text message, a ``bytes`` a complete binary message, and :class:`Ping`,
:class:`Pong` and :class:`Close` report control frames.
"""

from __future__ import annotations

import enum
from typing import Union

__all__ = ["Side", "State", "Ping", "Pong", "Close", "Event"]


class Side(enum.Enum):
    """Which end of the connection this protocol plays; clients mask, servers don't."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states after the opening handshake (RFC 6455 §4.1, §7)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# The members as module constants, for the per-message paths: ``State.OPEN`` is an
# enum lookup (about 60 ns on Python 3.11), a module global about 5.
OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED


class _ControlEvent:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return bool(self.data == other.data)

    def __hash__(self) -> int:
        return hash((type(self), self.data))


class Ping(_ControlEvent):
    """The peer sent a ping; the pong is already queued."""

    __slots__ = ()


class Pong(_ControlEvent):
    """The peer sent a pong (solicited or not)."""

    __slots__ = ()


class Close:
    """The peer sent a close frame; ``code`` is 1005 when it carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Close):
            return NotImplemented
        return (self.code, self.reason) == (other.code, other.reason)

    def __hash__(self) -> int:
        return hash((self.code, self.reason))


Event = Union[str, bytes, Ping, Pong, Close]
