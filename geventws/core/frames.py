"""WebSocket frames (RFC 6455 §5): opcodes, close codes, framing, masking, close payloads.

Pure functions and constants; the incremental parser that applies them lives in
:mod:`geventws.core.protocol`. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from typing import Callable, Optional, Union

from ..exceptions import ProtocolError

__all__ = [
    "NOT_UTF8",
    "OK_CLOSE_CODES",
    "Opcode",
    "CloseCode",
    "DATA_OPCODES",
    "CONTROL_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "apply_mask",
    "encode_data",
    "frame_header",
    "is_valid_close_code",
    "parse_close",
    "serialize_close",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2); other values are reserved and fail with 1002."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONT, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
KNOWN_OPCODES = frozenset(DATA_OPCODES | CONTROL_OPCODES)

#: Control frames carry at most 125 bytes of payload (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD = 125


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never sent on the wire
    ABNORMAL_CLOSURE = 1006  # never sent on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent on the wire


#: Close codes of a normal closure: :class:`~geventws.ConnectionClosedOK` rather than
#: :class:`~geventws.ConnectionClosedError`.
OK_CLOSE_CODES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 §7.4).

    1000-1003 and 1007-1014 are defined by the RFC and the IANA registry, 3000-4999 are
    for libraries and applications. 1004-1006, 1015, 1016-2999 and anything under 1000
    or over 4999 are invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close frame's payload into ``(code, reason)`` (RFC 6455 §5.5.1).

    An empty payload means "no status" and gives ``(1005, "")``. Raises
    :class:`ProtocolError` (1002) for a 1-byte payload or an invalid code and
    (1007) for a reason that is not valid UTF-8.
    """
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", 1007) from None
    return code, reason


def serialize_close(code: int, reason: str = "") -> bytes:
    """Encode a close payload. 1005 gives an empty payload; the reason must fit 123 bytes.

    Raises :class:`ValueError` for a code that cannot be sent or a reason that is too long.
    """
    if code == CloseCode.NO_STATUS_RCVD:
        if reason:
            raise ValueError("a close without status code cannot carry a reason")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} cannot be sent")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL_PAYLOAD - 2:
        raise ValueError("close reason must be at most 123 bytes in UTF-8")
    return struct.pack("!H", code) + encoded


_PACK_H = struct.Struct("!BB").pack
_PACK_H16 = struct.Struct("!BBH").pack
_PACK_H64 = struct.Struct("!BBQ").pack


def frame_header(first_byte: int, length: int, mask: Optional[bytes] = None) -> bytes:
    """The header of a frame: ``first_byte`` (FIN, RSV and opcode), the payload length
    in its shortest encoding (RFC 6455 §5.2) and, for client frames, the masking key."""
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = _PACK_H(first_byte, mask_bit | length)
    elif length < 65536:
        header = _PACK_H16(first_byte, mask_bit | 126, length)
    else:
        header = _PACK_H64(first_byte, mask_bit | 127, length)
    return header + mask if mask is not None else header


BytesLike = Union[bytes, bytearray, memoryview]

#: The error for bytes sent as text that are not valid UTF-8.
NOT_UTF8 = "bytes sent as text must be valid UTF-8; pass binary=True to send binary frames"


def encode_data(message: Union[str, BytesLike], binary: bool) -> bytes:
    """The payload of an outgoing data message (RFC 6455 §5.6): a ``str`` encoded as
    UTF-8; bytes-like data as ``bytes``, checked to be valid UTF-8 when it is sent as
    text. The one place outgoing text is validated (whole messages, broadcasts;
    fragments are checked incrementally by :meth:`Protocol.send_fragment`).

    Raises :class:`ValueError` for invalid UTF-8 sent as text, :class:`TypeError` for
    anything that is neither ``str`` nor bytes-like.
    """
    if isinstance(message, str):
        return message.encode("utf-8")
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise TypeError(f"cannot send {type(message).__name__}: use str or bytes")
    data = message if type(message) is bytes else bytes(message)
    if not binary:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(NOT_UTF8) from None
    return data


def _apply_mask_python(data: BytesLike, mask: BytesLike) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3), pure Python.

    Works on the whole payload as one big integer: about 350 MB/s, far from the C
    routine's speed but always available.
    """
    length = len(data)
    if not length:
        return b""
    mask = bytes(mask)
    repeated = mask * (length >> 2) + mask[: length & 3]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        length, "little"
    )


apply_mask: Callable[[BytesLike, BytesLike], bytes]
try:  # the compiled fast path, built by the package's own build when a compiler is there
    from .._speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - depends on the build
    apply_mask = _apply_mask_python
    SPEEDUPS = False
else:
    apply_mask = _apply_mask_c
    SPEEDUPS = True
