"""The WebSocket state machine (RFC 6455 §5-§7), sans I/O.

Theory of operation
-------------------
A :class:`Protocol` stands for one open connection, after the opening handshake. The
I/O layer feeds it what the socket gave (:meth:`Protocol.receive_data`,
:meth:`Protocol.receive_eof`) and gets back *events*, then writes whatever
:meth:`Protocol.data_to_send` returns. The application's own frames go the same way:
:meth:`Protocol.send_text` and friends only queue bytes.

Events (:mod:`geventws.core.events`) are a ``str`` or ``bytes`` per message
(reassembled from fragments by :class:`~geventws.core.assembler.Assembler`), and
:class:`Ping`, :class:`Pong`, :class:`Close`; pings are answered and a close is echoed
(code and reason) by the protocol itself, in what :meth:`~Protocol.data_to_send` returns.

Anything the peer does wrong (bad masking, reserved bits or opcodes, bad fragmentation,
invalid UTF-8, oversized messages, bad close payloads) *fails the connection*
(RFC 6455 §7.1.7): the protocol queues a close frame with the right code (1002, 1007 or
1009), records the error in :attr:`Protocol.error`, and ignores every byte after that.
The caller then closes the TCP connection once the close frame is written
(:attr:`Protocol.close_transport` turns true), the server first (§7.1.1:
:attr:`Protocol.shutdown_first`).

States: ``OPEN`` → ``CLOSING`` (a close frame was sent or received) → ``CLOSED`` (both
were, or the transport ended). After sending a close, messages the peer sent before it
saw our close are still delivered (RFC 6455 §1.4), but pings are no longer answered;
after receiving a close, nothing more is parsed. How the connection ended is derived
in one place, :class:`~geventws.core.ending.Ending`, a base of :class:`Protocol`.
"""

from __future__ import annotations

import codecs
import os
import struct
from typing import ClassVar, Optional, Union

from ..exceptions import (
    InvalidState,
    ProtocolError,
)
from .assembler import DEFAULT_MAX_FRAGMENTS, Assembler
from .deflate import Deflate
from .ending import Ending
from .events import CLOSED, CLOSING, OPEN, Close, Event, Ping, Pong, Side, State
from .frames import (
    KNOWN_OPCODES,
    MAX_CONTROL_PAYLOAD,
    NOT_UTF8,
    OK_CLOSE_CODES,
    BytesLike,
    CloseCode,
    Opcode,
    apply_mask,
    encode_data,
    frame_header,
    parse_close,
    serialize_close,
)
from .shared import SharedMessage

__all__ = [
    "Side",
    "State",
    "Ping",
    "Pong",
    "Close",
    "Event",
    "Protocol",
    "OK_CLOSE_CODES",
]

_UNPACK_H = struct.Struct("!H").unpack_from
_UNPACK_Q = struct.Struct("!Q").unpack_from
_utf8_decoder = codecs.getincrementaldecoder("utf-8")

_FIN = 0x80
_RSV1 = 0x40
_RSV_MASK = 0x70
# Headers of unmasked, unfragmented frames under 126 bytes, by length: the hot path.
#: A payload at least this large is unmasked (or copied) from a view of the input.
_VIEW_PAYLOAD = 4096
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_BINARY_HEADERS = [bytes((0x82, n)) for n in range(126)]


class Protocol(Ending):
    """One WebSocket connection's framing and state, for either side.

    ``max_size`` bounds a reassembled message (and so any frame) in bytes; ``None``:
    none. Over it the connection fails with 1009 as soon as a frame header proves it,
    before the payload is buffered. ``max_fragments`` bounds
    the frames of one message (default 65,536; ``None``: no limit); the next one fails
    the connection with 1009 before its payload is read.

    ``deflate`` is the negotiated permessage-deflate codec, if any (RFC 7692): RSV1 is
    then allowed on the first frame of a data message, which is inflated frame by
    frame with ``max_size`` counted on the output as it is produced; a compressed
    frame's own payload may exceed ``max_size`` only by deflate's worst-case overhead.
    """

    __slots__ = (
        "_buffer",
        "_client",
        "_filled",
        "_frame",
        "_max_fragments",
        "_message",
        "_out_decoder",
        "_out_frag",
        "_output",
        "_pending_error",
        "_want",
        "close_rcvd",
        "close_sent",
        "deflate",
        "eof_rcvd",
        "error",
        "max_size",
        "pending",
        "side",
        "state",
    )

    #: A frame at least this large is read into a buffer of its own
    #: (:meth:`receive_buffer`).
    large_frame: ClassVar[int] = 65536

    def __init__(
        self,
        side: Side,
        *,
        max_size: Optional[int] = 2**20,
        max_fragments: Optional[int] = DEFAULT_MAX_FRAGMENTS,
        deflate: Optional[Deflate] = None,
    ) -> None:
        self.side = side
        self.max_size = max_size
        #: The permessage-deflate codec, when the handshake negotiated it.
        self.deflate = deflate
        self.state = OPEN
        #: The close frame received from the peer, if any.
        self.close_rcvd: Optional[Close] = None
        #: The close frame sent to the peer, if any.
        self.close_sent: Optional[Close] = None
        #: The error that made this side fail the connection, if any.
        self.error: Optional[ProtocolError] = None
        #: Whether the transport reached end of file.
        self.eof_rcvd = False
        self._client = side is Side.CLIENT
        self._buffer: Union[bytes, bytearray] = b""  # unparsed input; a bytearray grows
        # A large frame being read into a buffer of its own (see receive_buffer), and
        # how much of it is there; the size of the incomplete frame _parse stopped at.
        self._frame: Optional[bytearray] = None
        self._filled = 0
        self._want = 0
        self._output: list[bytes] = []
        # The message being reassembled from fragments: made for the first one.
        self._message: Optional[Assembler] = None
        self._max_fragments = max_fragments
        if max_fragments is not None and max_fragments < 1:
            raise ValueError("max_fragments must be at least 1 (or None)")
        # The message being sent in fragments, if any: whether it is compressed, and the
        # UTF-8 checker of its text fragments.
        self._out_frag: Optional[bool] = None
        self._out_decoder: Optional[codecs.IncrementalDecoder] = None
        self._pending_error: Optional[ProtocolError] = None
        #: True when :meth:`receive_data` stopped early: it returned messages that came
        #: before a close frame or a protocol violation, and acts on that close or
        #: violation only at the next call (``receive_data(b"")`` will do). This lets the
        #: application answer those messages before the connection closes.
        self.pending = False

    @property
    def max_fragments(self) -> Optional[int]:
        """The most frames one incoming message may take (``None``: no limit)."""
        return self._max_fragments

    # -- receiving ------------------------------------------------------------------

    def receive_data(self, data: Union[bytes, bytearray]) -> list[Event]:
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
            self._buffer = b""
            return []
        if self._frame is not None:  # fed bytes instead of receive_buffer(): go back
            self._buffer, self._frame = self._frame[: self._filled], None
        buffer: Union[bytes, bytearray]
        if self._buffer:
            if type(self._buffer) is bytes:
                self._buffer = bytearray(self._buffer)
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        events: list[Event] = []
        try:
            consumed = self._parse(buffer, events)
        except ProtocolError as exc:
            exc.__traceback__ = exc.__context__ = None  # kept: its frames would make a cycle
            if _has_message(events):
                # Let the application answer the messages first (see ``pending``).
                self._pending_error = exc
                self.pending = True
            else:
                self.fail(exc)
            self._buffer = b""
            return events
        if consumed == len(buffer):
            self._buffer = b""
            return events
        want = self._want
        if want >= self.large_frame and (len(buffer) - consumed) * 4 >= want:
            # A large frame, a quarter of it here: give it a buffer of its size, so the
            # rest is read into place (receive_buffer) and the payload copied once.
            # Never more than four times what the peer actually sent.
            frame = self._frame = bytearray(want)
            self._filled = len(buffer) - consumed
            frame[: self._filled] = memoryview(buffer)[consumed:]
            self._buffer = b""
        elif consumed or buffer is not self._buffer:
            self._buffer = bytes(buffer[consumed:])
        return events

    def receive_buffer(self) -> Optional[memoryview]:
        """Where to read the next bytes into, for a large frame; ``None``: read any
        amount and pass it to :meth:`receive_data`. Once a quarter of a frame of
        :attr:`large_frame` bytes or more has arrived, it gets a buffer of its size:
        read into the returned view (``recv_into``), then call :meth:`received_into`
        with the count, before anything else touches the protocol. Mixing in
        :meth:`receive_data` stays correct (the bytes are moved back)."""
        frame = self._frame
        if frame is None or self.state is CLOSED:
            return None
        return memoryview(frame)[self._filled :]

    def received_into(self, count: int) -> list[Event]:
        """``count`` bytes were read into :meth:`receive_buffer`'s view; return the
        events they complete (as :meth:`receive_data`); ignored once the connection
        failed meanwhile. The end of the transport is :meth:`receive_eof`."""
        frame = self._frame
        if frame is None:
            return []
        self._filled += count
        if self._filled < len(frame):
            return []
        self._frame = None
        return self.receive_data(frame)

    def _parse(self, buf: Union[bytes, bytearray], events: list[Event]) -> int:
        """Parse every complete frame in ``buf``; return the number of bytes used."""
        pos = 0
        end = len(buf)
        client = self._client
        max_size = self.max_size
        append = events.append
        message = self._message
        self._want = 0
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
                and (message is None or message.opcode is None)
                and (max_size is None or length <= max_size)
                and bool(masked) is not client
            )
            if not simple:
                self._check_header(b0, b1, opcode, length)
            if masked:
                header += 4
            stop = pos + header + length
            if stop > end:
                self._want = stop - pos
                break
            if length >= _VIEW_PAYLOAD:  # copied once, from a view
                with memoryview(buf) as view:
                    if masked:
                        payload = apply_mask(
                            view[stop - length : stop], view[pos + header - 4 : pos + header]
                        )
                    else:
                        payload = bytes(view[stop - length : stop])
            elif masked:
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
                message = self._assembler()
                done = message.add(opcode, bool(b0 & _FIN), bool(b0 & _RSV1), payload)
                if done is not None:
                    append(done)
        return pos

    def _check_header(self, b0: int, b1: int, opcode: int, length: int) -> None:
        """Apply every rule that a frame header alone can break (fail fast)."""
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
        self._assembler().check(opcode, bool(b0 & _RSV1), length)

    def _assembler(self) -> Assembler:
        message = self._message
        if message is None:
            message = self._message = Assembler(self.max_size, self._max_fragments, self.deflate)
        return message

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
                # Echo the code and its reason (RFC 6455 §5.5.1), as browsers, Node's ws
                # and websockets do; a close without code gets one without.
                self._send_close(close)
            self.state = CLOSED if self.close_sent is not None else CLOSING
            self._buffer = b""
            events.append(close)

    def receive_eof(self) -> None:
        """The transport reached end of file (or was lost): the connection is closed."""
        self.eof_rcvd = True
        self.state = CLOSED
        self._buffer = b""
        self._frame = None
        self.pending = False  # nothing more will be parsed
        self._pending_error = None

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
        if self.state is not OPEN or self.close_sent is not None:
            raise InvalidState(f"cannot send data in state {self.state.name}")

    def send_text(self, data: Union[str, BytesLike], compress: Optional[bool] = None) -> None:
        """Queue a text message: a ``str``, or bytes that must be valid UTF-8
        (:class:`ValueError` otherwise).

        With permessage-deflate negotiated, the message is compressed when ``compress``
        is True, or when it is None and the message reaches the codec's threshold;
        ``compress=False`` sends it as is (for data that is already compressed).
        Raises :class:`InvalidState` once the closing handshake started.
        """
        self._send_data(Opcode.TEXT, _TEXT_HEADERS, encode_data(data, False), compress)

    def send_binary(self, data: Union[str, BytesLike], compress: Optional[bool] = None) -> None:
        """Queue a binary message (``compress`` as in :meth:`send_text`). Raises
        :class:`InvalidState` once closing."""
        self._send_data(Opcode.BINARY, _BINARY_HEADERS, encode_data(data, True), compress)

    def _send_data(
        self, opcode: int, small_headers: list[bytes], data: bytes, compress: Optional[bool]
    ) -> None:
        if self.close_sent is not None or self.state is not OPEN or self._out_frag is not None:
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
        self,
        data: Union[str, BytesLike],
        *,
        binary: bool,
        fin: bool,
        compress: Optional[bool] = None,
    ) -> None:
        """Queue one fragment of a message sent in several frames (RFC 6455 §5.4).

        The first call starts the message (``binary`` picks text or binary), the call
        with ``fin=True`` ends it; calls in between continue it. The fragments of a
        text message must be valid UTF-8 together: they are checked as they come, and
        :class:`ValueError` is raised for the first fragment that can't be (or for an
        incomplete character at the end), with nothing queued for it. With
        permessage-deflate, ``compress`` (or the threshold, applied to the first
        fragment) decides for the whole message: each fragment is compressed as it
        comes, RSV1 is set on the first frame only, and the final empty block is
        stripped from the last one only (RFC 7692 §7.2.1). Control frames may still be
        sent in between; whole messages may not (:class:`InvalidState`), nor anything
        once closing.
        """
        self._check_open()
        first = self._out_frag is None
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if first and not binary:
            self._out_decoder = _utf8_decoder()
        if self._out_decoder is not None:
            try:
                self._out_decoder.decode(payload, fin)
            except UnicodeDecodeError:
                if first:
                    self._out_decoder = None
                raise ValueError(NOT_UTF8) from None
        if first:
            deflate = self.deflate
            compressed = deflate is not None and deflate.wants(len(payload), compress)
            opcode = Opcode.BINARY if binary else Opcode.TEXT
            rsv = _RSV1 if compressed else 0
            self._out_frag = compressed
        else:
            compressed = bool(self._out_frag)
            opcode = Opcode.CONT
            rsv = 0
        if compressed:
            assert self.deflate is not None
            payload = self.deflate.compress_fragment(payload, fin)
        self._queue_frame(opcode, payload, fin=fin, rsv=rsv)
        if fin:
            self._out_frag = None
            self._out_decoder = None

    @property
    def sending_fragments(self) -> bool:
        """Whether a fragmented message was started and not finished yet."""
        return self._out_frag is not None

    def send_shared(self, message: SharedMessage) -> bytes:
        """The frame of ``message`` (framed once for many connections, see
        :class:`~geventws.core.shared.SharedMessage`) for this connection; the caller
        writes it to the transport itself, after everything :meth:`data_to_send`
        returned so far. Server side only: client frames are masked each with a fresh
        key.

        A compressed frame comes from a fresh deflate stream, so this connection's
        compression context is dropped (the peer's window now holds bytes its
        compressor never saw). Raises :class:`InvalidState` on a client, once closing,
        or while a fragmented message is being sent.
        """
        if (
            self.state is not OPEN
            or self.close_sent is not None
            or self._out_frag is not None
            or self._client
        ):
            if self._client:
                raise InvalidState("client frames are masked per frame: use send_text/send_binary")
            self._check_open()
            raise InvalidState("a fragmented message is being sent")
        deflate = self.deflate
        if deflate is not None and deflate.wants(len(message.data), message.compress):
            deflate.forget_context()
            return message.compressed_frame(deflate)
        return message.frame

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
        if self.close_sent is not None or self.state is CLOSED:
            raise InvalidState("close frame already sent")
        self._send_close(Close(code, reason), payload)

    def _send_close(self, close: Close, payload: Optional[bytes] = None) -> None:
        if payload is None:
            payload = serialize_close(close.code, close.reason)
        self._queue_frame(Opcode.CLOSE, payload)
        self.close_sent = close
        self.state = CLOSED if self.close_rcvd is not None else CLOSING

    def fail(self, error: ProtocolError) -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame with ``error.code``
        unless one was sent already, and ignore all further input. Also how the local
        side gives up (a keepalive timeout, a send timeout): ``error`` then carries the
        code to report (1011, 1008)."""
        self.error = error
        self._frame = None
        if self.close_sent is None and self.state is not CLOSED:
            self._send_close(Close(error.code, _short_reason(str(error))))
        self.state = CLOSED

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


def _has_message(events: list[Event]) -> bool:
    return any(type(event) is str or type(event) is bytes for event in events)


def _short_reason(message: str) -> str:
    encoded = message.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    return encoded.decode("utf-8", "ignore")
