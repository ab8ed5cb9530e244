"""Sending one message as many frames (RFC 6455 §5.4), streamed as it is produced.

A message sent from an iterable goes out a frame per item, each written as it comes
(so a generator can stream a large message); an empty final frame ends it, as
websockets does. Frames of other messages can't go between its frames, so other
greenlets' messages wait for it (:class:`Fragmenting`); pings, pongs and a close may
go in between.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Union

from gevent import getcurrent
from gevent.event import Event

from .core.protocol import Protocol
from .exceptions import InvalidState

__all__ = ["Fragmenting", "send_fragments"]

Sendable = Union[str, bytes, bytearray, memoryview]


class Fragmenting:
    """A fragmented message being sent: its greenlet, and an event set when done."""

    __slots__ = ("done", "owner")

    def __init__(self) -> None:
        self.owner = getcurrent()
        self.done = Event()

    def wait(self) -> None:
        """Wait until the message is complete. Raises :class:`RuntimeError` in its own
        greenlet (a message can't be sent inside a fragmented message)."""
        if self.owner is getcurrent():
            raise RuntimeError("cannot send a message inside a fragmented message")
        self.done.wait()


def send_fragments(
    protocol: Protocol,
    first: Any,
    rest: Iterator[Any],
    *,
    binary: bool,
    compress: Optional[bool],
    queued: Callable[[Protocol], None],
) -> None:
    """Send ``first`` and the items of ``rest`` as one message, calling
    ``queued(protocol)`` after each frame to have it written.

    Items of ``str`` make a text message; bytes-like items a binary one, or a text one
    with ``binary=False`` (valid UTF-8 together: :class:`ValueError` otherwise). Raises
    :class:`TypeError` for an item of another kind, the connection's
    :class:`~geventws.ConnectionClosed` once it is closing, and whatever the iterable
    raises; the caller fails the connection when the message had started.
    """
    text = isinstance(first, str)
    as_binary = not text and binary
    item = first
    try:
        while True:
            if isinstance(item, str) is not text or not isinstance(
                item, (str, bytes, bytearray, memoryview)
            ):
                raise TypeError("the fragments of a message must be all str or all bytes")
            protocol.send_fragment(item, binary=as_binary, fin=False, compress=compress)
            queued(protocol)
            item = next(rest, _END)
            if item is _END:
                break
        protocol.send_fragment(b"", binary=as_binary, fin=True, compress=compress)
        queued(protocol)
    except InvalidState:
        raise protocol.closed_exception() from None


_END: Any = object()
