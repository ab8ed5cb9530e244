"""The WebSocket state machine (RFC 6455 §5-§7), sans I/O.

Theory of operation
-------------------
A :class:`Protocol` stands for one open connection, after the opening handshake. The
I/O layer feeds it what the socket gave (:meth:`Protocol.receive_data`,
:meth:`Protocol.receive_eof`) and gets back *events*, then writes whatever
:meth:`Protocol.data_to_send` returns. The application's own frames go the same way:
:meth:`Protocol.send_text` and friends only queue bytes.

Events are deliberately cheap, since one is made per message on the hot path:

* a ``str`` is a complete text message, a ``bytes`` a complete binary message
  (fragmented messages are reassembled here, within ``max_size``);
* :class:`Ping`, :class:`Pong` and :class:`Close` report control frames. Pings are
  answered and a close is echoed by the protocol itself: the caller only has to send
  what :meth:`~Protocol.data_to_send` returns.

Anything the peer does wrong (bad masking, reserved bits or opcodes, bad fragmentation,
invalid UTF-8, oversized messages, bad close payloads) *fails the connection*
(RFC 6455 §7.1.7): the protocol queues a close frame with the right code (1002, 1007 or
1009), records the error in :attr:`Protocol.error`, and ignores every byte after that.
The caller then closes the TCP connection once the close frame is written
(:attr:`Protocol.close_transport` turns true), the server first (§7.1.1).

States: ``OPEN`` → ``CLOSING`` (a close frame was sent or received) → ``CLOSED`` (both
were, or the transport ended). After sending a close, messages the peer sent before it
saw our close are still delivered (RFC 6455 §1.4), but pings are no longer answered;
after receiving a close, nothing more is parsed.
"""

from __future__ import annotations

import codecs
import enum
import os
import struct
from typing import Optional, Union

from ..exceptions import InvalidState, PayloadTooBig, ProtocolError
from .deflate import Deflate
from .frames import (
    KNOWN_OPCODES,
    MAX_CONTROL_PAYLOAD,
    CloseCode,
    Opcode,
    apply_mask,
    frame_header,
    parse_close,
    serialize_close,
)

__all__ = [
    "Side",
    "State",
    "Ping",
    "Pong",
    "Close",
    "Event",
    "Protocol",
    "prepare_frame",
]

_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Side(enum.Enum):
    """Which end of the connection this protocol plays; clients mask, servers don't."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states after the opening handshake (RFC 6455 §4.1, §7)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


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

_FIN = 0x80
_RSV1 = 0x40
_RSV_MASK = 0x70
# Headers of unmasked, unfragmented frames under 126 bytes, by length: the hot path.
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_BINARY_HEADERS = [bytes((0x82, n)) for n in range(126)]


class Protocol:
    """One WebSocket connection's framing and state, for either side.

    ``max_size`` bounds a reassembled message (and so any single frame) in bytes;
    ``None`` means no limit. Over it the connection fails with 1009 as soon as a
    frame header proves it, before the payload is buffered.

    ``deflate`` is the negotiated permessage-deflate codec, if any (RFC 7692): RSV1 is
    then allowed on the first frame of a data message, which is inflated frame by
    frame with ``max_size`` counted on the output as it is produced; a compressed
    frame's own payload may exceed ``max_size`` only by deflate's worst-case overhead.
    """

    def __init__(
        self,
        side: Side,
        *,
        max_size: Optional[int] = 2**20,
        deflate: Optional[Deflate] = None,
    ) -> None:
        self.side = side
        self.max_size = max_size
        #: The permessage-deflate codec, when the handshake negotiated it.
        self.deflate = deflate
        self.state = State.OPEN
        #: The close frame received from the peer, if any.
        self.close_rcvd: Optional[Close] = None
        #: The close frame sent to the peer, if any.
        self.close_sent: Optional[Close] = None
        #: The error that made this side fail the connection, if any.
        self.error: Optional[ProtocolError] = None
        #: Whether the transport reached end of file.
        self.eof_rcvd = False
        self._client = side is Side.CLIENT
        self._buffer = bytearray()
        self._output: list[bytes] = []
        # The message being reassembled: its opcode, fragments and size so far.
        self._frag_opcode: Optional[int] = None
        self._frag_parts: list[Union[bytes, str]] = []
        self._frag_size = 0
        self._frag_compressed = False
        # The message being sent in fragments, if any: whether it is compressed.
        self._out_frag: Optional[bool] = None
        self._decoder: Optional[codecs.IncrementalDecoder] = None
        self._pending_error: Optional[ProtocolError] = None
        #: True when :meth:`receive_data` stopped early: it returned messages that came
        #: before a close frame or a protocol violation, and acts on that close or
        #: violation only at the next call (``receive_data(b"")`` will do). This lets the
        #: application answer those messages before the connection closes.
        self.pending = False

    # -- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the transport; return the events they complete.

        Never raises for bad input: a violation fails the connection instead (see the
        module docstring). After the peer's close frame or a failure, data is ignored.
        When messages precede a close frame or a violation in ``data``, they are returned
        first and :attr:`pending` is set: call again (``receive_data(b"")``) to act on
        the rest.
        """
        if self.close_rcvd is not None or self.error is not None or self.eof_rcvd:
            return []
        self.pending = False
        if self._pending_error is not None:
            self.fail(self._pending_error)
            self._buffer = bytearray()
            return []
        if self._buffer:
            self._buffer += data
            buffer: Union[bytes, bytearray] = self._buffer
        else:
            buffer = data
        events: list[Event] = []
        try:
            consumed = self._parse(buffer, events)
        except ProtocolError as exc:
            if _has_message(events):
                # Let the application answer the messages first (see ``pending``).
                self._pending_error = exc
                self.pending = True
            else:
                self.fail(exc)
            self._buffer = bytearray()
            return events
        if consumed == len(buffer):
            if self._buffer:
                self._buffer = bytearray()
        elif consumed or not self._buffer:
            self._buffer = bytearray(buffer[consumed:])
        return events

    def _parse(self, buf: Union[bytes, bytearray], events: list[Event]) -> int:
        """Parse every complete frame in ``buf``; return the number of bytes used."""
        pos = 0
        end = len(buf)
        client = self._client
        max_size = self.max_size
        append = events.append
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _UNPACK_H(buf, pos + 2)
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _UNPACK_Q(buf, pos + 2)
                header = 10
                if length >> 63:
                    raise ProtocolError("payload length with the most significant bit set")
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            # The common case: a whole text or binary message in one well-masked frame.
            simple = (
                b0 in (0x81, 0x82)
                and self._frag_opcode is None
                and (max_size is None or length <= max_size)
                and bool(masked) is not client
            )
            if not simple:
                self._check_header(b0, b1, opcode, length)
            if masked:
                header += 4
            stop = pos + header + length
            if stop > end:
                break
            if masked:
                payload = apply_mask(buf[pos + header : stop], buf[pos + header - 4 : pos + header])
            elif client:
                payload = bytes(buf[pos + header : stop])
            else:  # pragma: no cover - _check_header refused it
                raise AssertionError("unmasked frame reached the server parser")
            if simple:
                pos = stop
                if b0 == 0x81:
                    try:
                        append(payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
                else:
                    append(payload)
                continue
            if opcode == Opcode.CLOSE and _has_message(events):
                # Stop before the close: the application gets to answer these messages
                # before the close frame is echoed (see ``pending``).
                self.pending = True
                return pos
            pos = stop
            if opcode >= 8:
                self._control_frame(opcode, payload, events)
                if self.close_rcvd is not None:
                    return end  # nothing after a close frame is processed
            else:
                self._data_frame(b0, opcode, payload, events)
        return pos

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        """Apply every rule that a frame header alone can break (fail fast)."""
        compressed = self._frag_compressed if opcode == 0 else bool(b0 & _RSV1)
        if b0 & _RSV_MASK:
            if self.deflate is None or b0 & _RSV_MASK != _RSV1:
                raise ProtocolError("reserved bits must be 0 without a negotiated extension")
            if opcode >= 8:
                raise ProtocolError("RSV1 set on a control frame")
            if opcode == 0:
                raise ProtocolError("RSV1 set on a continuation frame")
        if opcode not in KNOWN_OPCODES:
            raise ProtocolError(f"reserved opcode {opcode}")
        if bool(b1 & 0x80) is self._client:
            raise ProtocolError(
                "frames from a server must not be masked"
                if self._client
                else "frames from a client must be masked"
            )
        if opcode >= 8:
            if not b0 & _FIN:
                raise ProtocolError("fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError("control frame payload over 125 bytes")
            return
        if opcode == 0:
            if self._frag_opcode is None:
                raise ProtocolError("continuation frame without a message to continue")
        elif self._frag_opcode is not None:
            raise ProtocolError("new data frame inside a fragmented message")
        if compressed:
            # The output is counted while inflating; cap the frame itself too.
            if self.max_size is not None and length > _deflate_bound(self.max_size):
                raise PayloadTooBig(f"compressed frame over max_size ({length} bytes)")
        elif self.max_size is not None and self._frag_size + length > self.max_size:
            raise PayloadTooBig(
                f"message over max_size ({self._frag_size + length} > {self.max_size} bytes)"
            )

    def _data_frame(self, b0: int, opcode: int, payload: bytes, events: list[Event]) -> None:
        fin = b0 & _FIN
        if opcode == 0:
            opcode = self._frag_opcode  # type: ignore[assignment]
            if self._frag_compressed:
                payload = self._inflate(payload, bool(fin))
        else:
            compressed = b0 & _RSV1
            if compressed:
                payload = self._inflate(payload, bool(fin))
            if fin:
                # The common case: a whole message in one frame.
                if opcode == 1:
                    try:
                        events.append(payload.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
                else:
                    events.append(payload)
                return
            self._frag_opcode = opcode
            self._frag_size = 0
            self._frag_compressed = bool(compressed)
            if opcode == 1:
                self._decoder = _utf8_decoder()
        self._frag_size += len(payload)
        if opcode == 1:
            assert self._decoder is not None
            try:
                # Validates as it goes: invalid bytes fail here, not at the last frame.
                self._frag_parts.append(self._decoder.decode(payload, bool(fin)))
            except UnicodeDecodeError:
                raise ProtocolError("invalid UTF-8 in a text message", 1007) from None
        else:
            self._frag_parts.append(payload)
        if fin:
            parts = self._frag_parts
            message: Union[str, bytes] = (
                "".join(parts) if opcode == 1 else b"".join(parts)  # type: ignore[arg-type]
            )
            events.append(message)
            self._frag_parts = []
            self._frag_opcode = None
            self._frag_size = 0
            self._frag_compressed = False
            self._decoder = None

    def _inflate(self, payload: bytes, fin: bool) -> bytes:
        """Decompress one frame of the current compressed message within max_size."""
        assert self.deflate is not None
        max_size = self.max_size
        limit = None if max_size is None else max_size - self._frag_size
        return self.deflate.decompress(payload, fin, limit)

    def _control_frame(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == Opcode.PING:
            if self.close_sent is None:
                self._queue_frame(Opcode.PONG, payload)
            events.append(Ping(payload))
        elif opcode == Opcode.PONG:
            events.append(Pong(payload))
        else:
            code, reason = parse_close(payload)
            close = Close(code, reason)
            self.close_rcvd = close
            if self.close_sent is None:
                # Echo the code (RFC 6455 §5.5.1); a close without code gets one without.
                self._send_close(Close(code, "") if code != CloseCode.NO_STATUS_RCVD else close)
            self.state = State.CLOSED if self.close_sent is not None else State.CLOSING
            self._buffer = bytearray()
            events.append(close)

    def receive_eof(self) -> None:
        """The transport reached end of file: the connection is closed."""
        self.eof_rcvd = True
        self.state = State.CLOSED
        self._buffer = bytearray()

    # -- sending --------------------------------------------------------------------

    def _queue_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        first = opcode | (_FIN if fin else 0) | rsv
        if self._client:
            mask = os.urandom(4)
            self._output.append(frame_header(first, len(payload), mask))
            self._output.append(apply_mask(payload, mask))
        elif len(payload) < 4096:
            self._output.append(frame_header(first, len(payload)) + payload)
        else:  # keep a large payload as its own chunk: no copy to prepend the header
            self._output.append(frame_header(first, len(payload)))
            self._output.append(payload)

    def _check_open(self) -> None:
        if self.state is not State.OPEN or self.close_sent is not None:
            raise InvalidState(f"cannot send data in state {self.state.name}")

    def send_text(self, data: bytes, compress: Optional[bool] = None) -> None:
        """Queue a text message; ``data`` must already be valid UTF-8.

        With permessage-deflate negotiated, the message is compressed when ``compress``
        is True, or when it is None and the message reaches the codec's threshold;
        ``compress=False`` sends it as is (for data that is already compressed).
        Raises :class:`InvalidState` once the closing handshake started.
        """
        self._send_data(Opcode.TEXT, _TEXT_HEADERS, data, compress)

    def send_binary(self, data: bytes, compress: Optional[bool] = None) -> None:
        """Queue a binary message (``compress`` as in :meth:`send_text`). Raises
        :class:`InvalidState` once closing."""
        self._send_data(Opcode.BINARY, _BINARY_HEADERS, data, compress)

    def _send_data(
        self, opcode: int, small_headers: list[bytes], data: bytes, compress: Optional[bool]
    ) -> None:
        if (
            self.close_sent is not None
            or self.state is not State.OPEN
            or self._out_frag is not None
        ):
            self._check_open()
            if self._out_frag is not None:
                raise InvalidState("a fragmented message is being sent")
        deflate = self.deflate
        if deflate is not None and deflate.wants(len(data), compress):
            self._queue_frame(opcode, deflate.compress(data), rsv=_RSV1)
        elif len(data) < 126 and not self._client:
            self._output.append(small_headers[len(data)] + data)  # the hot path
        else:
            self._queue_frame(opcode, data)

    def send_fragment(
        self, data: bytes, *, binary: bool, fin: bool, compress: Optional[bool] = None
    ) -> None:
        """Queue one fragment of a message sent in several frames (RFC 6455 §5.4).

        The first call starts the message (``binary`` picks text or binary; text
        fragments must be valid UTF-8 together), the call with ``fin=True`` ends it;
        calls in between continue it. With permessage-deflate, ``compress`` (or the
        threshold, applied to the first fragment) decides for the whole message: each
        fragment is compressed as it comes, RSV1 is set on the first frame only, and
        the final empty block is stripped from the last one only (RFC 7692 §7.2.1).
        Control frames may still be sent in between; whole messages may not
        (:class:`InvalidState`), nor anything once closing.
        """
        self._check_open()
        if self._out_frag is None:  # the first fragment
            deflate = self.deflate
            compressed = deflate is not None and deflate.wants(len(data), compress)
            opcode = Opcode.BINARY if binary else Opcode.TEXT
            rsv = _RSV1 if compressed else 0
            self._out_frag = compressed
        else:
            compressed = self._out_frag
            opcode = Opcode.CONT
            rsv = 0
        if compressed:
            assert self.deflate is not None
            data = self.deflate.compress_fragment(data, fin)
        self._queue_frame(opcode, data, fin=fin, rsv=rsv)
        if fin:
            self._out_frag = None

    @property
    def sending_fragments(self) -> bool:
        """Whether a fragmented message was started and not finished yet."""
        return self._out_frag is not None

    def send_frame(self, frame: bytes) -> None:
        """Queue a data frame prepared by :func:`prepare_frame` (a broadcast frames its
        message once for many connections): the whole frame, or the unwritten rest of
        one whose beginning the caller wrote to the transport itself while nothing else
        was queued. Server side only: client frames are masked each with a fresh key.

        A compressed frame must come from a fresh deflate stream
        (:meth:`Deflate.compress_shared`), and the caller must first call
        :meth:`Deflate.forget_context`: the peer's window will hold bytes this
        connection's compressor never saw. Raises :class:`InvalidState` once closing."""
        if self._client:
            raise InvalidState("client frames are masked per frame: use send_text/send_binary")
        self._check_open()
        if self._out_frag is not None:
            raise InvalidState("a fragmented message is being sent")
        self._output.append(frame)

    def send_ping(self, data: bytes) -> None:
        """Queue a ping (at most 125 bytes). Raises :class:`InvalidState` once closing."""
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("ping payload must be at most 125 bytes")
        self._check_open()
        self._queue_frame(Opcode.PING, data)

    def send_pong(self, data: bytes) -> None:
        """Queue an unsolicited pong (at most 125 bytes)."""
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError("pong payload must be at most 125 bytes")
        self._check_open()
        self._queue_frame(Opcode.PONG, data)

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2).

        Raises :class:`ValueError` for a code that cannot be sent or an overlong
        reason, :class:`InvalidState` if a close frame was already sent.
        """
        payload = serialize_close(code, reason)  # validates before any state change
        if self.close_sent is not None or self.state is State.CLOSED:
            raise InvalidState("close frame already sent")
        self._send_close(Close(code, reason), payload)

    def _send_close(self, close: Close, payload: Optional[bytes] = None) -> None:
        if payload is None:
            payload = serialize_close(close.code, close.reason)
        self._queue_frame(Opcode.CLOSE, payload)
        self.close_sent = close
        self.state = State.CLOSED if self.close_rcvd is not None else State.CLOSING

    def fail(self, error: ProtocolError) -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame with ``error.code``
        unless one was sent already, and ignore all further input."""
        self.error = error
        if self.close_sent is None and self.state is not State.CLOSED:
            self._send_close(Close(error.code, _short_reason(str(error))))
        self.state = State.CLOSED

    @property
    def output_pending(self) -> bool:
        """Whether bytes are queued for :meth:`data_to_send`."""
        return bool(self._output)

    def data_to_send(self) -> list[bytes]:
        """Everything queued for the transport since the last call, in order."""
        output = self._output
        if output:
            self._output = []
        return output

    @property
    def close_transport(self) -> bool:
        """True once the TCP connection should be closed: the closing handshake is over,
        the connection failed, or the transport ended."""
        return self.state is State.CLOSED


def prepare_frame(data: bytes, binary: bool, compressed: bool = False) -> bytes:
    """A whole unmasked (server) text or binary frame for ``data``, for
    :meth:`Protocol.send_frame`. Text must already be valid UTF-8; ``compressed``
    sets RSV1 on a payload compressed for permessage-deflate."""
    first = _FIN | (Opcode.BINARY if binary else Opcode.TEXT) | (_RSV1 if compressed else 0)
    return frame_header(first, len(data)) + data


def _deflate_bound(size: int) -> int:
    """The largest deflate output for ``size`` bytes of input: stored blocks add 5
    bytes per 65,535 (zlib's deflateBound, rounded up generously)."""
    return size + (size >> 12) + 64


def _has_message(events: list[Event]) -> bool:
    return any(type(event) is str or type(event) is bytes for event in events)


def _short_reason(message: str) -> str:
    encoded = message.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    return encoded.decode("utf-8", "ignore")
