"""Reassembly of incoming data messages (RFC 6455 §5.4), within limits, sans I/O.

A message may come in one frame (the common case, handled inline by
:class:`~geventws.core.protocol.Protocol`) or in many: a first frame, continuation
frames, the last one with FIN set. :class:`Assembler` applies every limit from the frame
header, before the payload is read (``max_size`` on the message's size, counted after
inflating when permessage-deflate compressed it; ``max_fragments`` on its frames), keeps
the parts in one growing buffer (not a list of millions of small objects: an attacker's
one-byte fragments cost their bytes, not an object each), checks UTF-8 as the text comes
so invalid text fails at the first bad frame, and inflates frame by frame.
"""

from __future__ import annotations

import codecs
from typing import Optional, Union

from ..exceptions import PayloadTooBig, ProtocolError
from .deflate import Deflate

__all__ = ["DEFAULT_MAX_FRAGMENTS", "Assembler"]

#: The default bound on the frames of one message. Browsers send a message in one frame;
#: the Autobahn testsuite's largest fragmented messages (cases 9.3 and 9.4: 4 MiB in
#: 64-byte frames) take 65,536. Memory is bounded by ``max_size`` whatever the count
#: (the parts share one buffer); the count bounds the work of a message.
DEFAULT_MAX_FRAGMENTS = 65536

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Assembler:
    """The state of the incoming message being reassembled, if any.

    ``opcode`` is 1 (text) or 2 (binary) while a fragmented message is under way, else
    ``None``. Limits: ``max_size`` bytes per message (``None``: none), ``max_fragments``
    frames per message (``None``: none). Violations raise :class:`ProtocolError` (1002
    for bad fragmentation, 1007 for invalid UTF-8 or compressed data) or
    :class:`PayloadTooBig` (1009); the protocol turns them into a failed connection.
    """

    __slots__ = (
        "_compressed",
        "_count",
        "_decoder",
        "_parts",
        "_size",
        "deflate",
        "max_fragments",
        "max_size",
        "opcode",
    )

    def __init__(
        self,
        max_size: Optional[int],
        max_fragments: Optional[int] = DEFAULT_MAX_FRAGMENTS,
        deflate: Optional[Deflate] = None,
    ) -> None:
        if max_fragments is not None and max_fragments < 1:
            raise ValueError("max_fragments must be at least 1 (or None)")
        self.max_size = max_size
        self.max_fragments = max_fragments
        self.deflate = deflate
        self.opcode: Optional[int] = None
        self._compressed = False
        self._count = 0  # frames of the current message so far
        self._size = 0  # its size so far (inflated)
        self._parts: Optional[bytearray] = None  # the parts so far, while under way
        self._decoder: Optional[codecs.IncrementalDecoder] = None

    def check(self, opcode: int, rsv1: bool, length: int) -> None:
        """Apply the rules a data frame's header alone can break: fragmentation order,
        ``max_fragments``, and ``max_size`` on the payload length (a compressed frame
        may exceed it by deflate's worst-case overhead: its output is counted while
        inflating)."""
        max_size = self.max_size
        if opcode == 0:
            if self.opcode is None:
                raise ProtocolError("continuation frame without a message to continue")
            if self.max_fragments is not None and self._count >= self.max_fragments:
                raise PayloadTooBig(f"message in more than {self.max_fragments} fragments")
            compressed = self._compressed
        else:
            if self.opcode is not None:
                raise ProtocolError("new data frame inside a fragmented message")
            compressed = rsv1
        if max_size is None:
            return
        if compressed:
            if length > _deflate_bound(max_size):
                raise PayloadTooBig(f"compressed frame over max_size ({length} bytes)")
        elif self._size + length > max_size:
            raise PayloadTooBig(f"message over max_size ({self._size + length} > {max_size} bytes)")

    def add(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> Union[str, bytes, None]:
        """Take one data frame whose header :meth:`check` accepted; return the
        message it completes, or ``None``."""
        if opcode == 0:
            if self._compressed:
                payload = self._inflate(payload, fin)
        else:
            if rsv1:
                self._size = 0
                payload = self._inflate(payload, fin)
            if fin:  # a whole message in one frame
                return _decode(payload) if opcode == 1 else payload
            self.opcode = opcode
            self._compressed = rsv1
            self._count = 0
            self._size = 0
            self._parts = bytearray()
            if opcode == 1:
                self._decoder = _utf8_decoder()
        self._count += 1
        self._size += len(payload)
        if self._decoder is not None:
            try:  # fail at the first invalid frame, not at the last one
                self._decoder.decode(payload, fin)
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
        parts = self._parts
        assert parts is not None
        parts += payload
        if not fin:
            return None
        data = bytes(parts)
        text = self.opcode == 1
        self.opcode = None
        self._compressed = False
        self._parts = None
        self._decoder = None
        self._count = self._size = 0
        return data.decode("utf-8") if text else data

    def _inflate(self, payload: bytes, fin: bool) -> bytes:
        """Decompress one frame of the current compressed message within max_size."""
        assert self.deflate is not None
        max_size = self.max_size
        limit = None if max_size is None else max_size - self._size
        return self.deflate.decompress(payload, fin, limit)


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8 in a text message", 1007) from None


def _deflate_bound(size: int) -> int:
    """The largest deflate output for ``size`` bytes of input: stored blocks add 5
    bytes per 65,535 (zlib's deflateBound, rounded up generously)."""
    return size + (size >> 12) + 64
