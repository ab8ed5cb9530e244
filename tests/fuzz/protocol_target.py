"""The protocol state machine under fuzzing, shared by the four ``fuzz_protocol_*``
targets (server or client side, with or without permessage-deflate).

An input is a configuration (``max_size``, the codec's negotiated parameters, read
from the end of the input) and a script of steps: feed the next N wire bytes (N chosen
by the input, so any chunking), ``receive_data(b"")``, application sends of every
kind, end of file. Feeds go through ``receive_buffer()``/``received_into()`` when the
protocol hands out a large frame's buffer and the feed fits it, as the I/O layer's
``recv_into`` does (frames of 16 bytes or more count as large here). After every step
the target checks:

* ``receive_data`` never raises; events are ``str``, ``bytes``, ``Ping``, ``Pong`` or
  ``Close`` (last, and recorded in ``close_rcvd``); messages fit ``max_size``;
* ``pending`` is only set with a message in the events and one ``receive_data(b"")``
  settles it;
* after a close frame, a failure or end of file, input is ignored: no event, no output;
* a failure sets ``error`` with code 1002, 1007 or 1009 (``PayloadTooBig`` for 1009);
* what ``receive_data`` queued is exactly the pongs for the pings it reported (while no
  close was sent), the echo of a received close and the close of a failure, in order;
* everything queued, application sends included, reads back as a valid frame stream
  through the independent reader in :mod:`tests.fuzz.wire` (masking, minimal lengths,
  RSV1, fragmentation, close payloads, UTF-8, the negotiated deflate window and
  context takeover) and carries exactly the messages the application sent;
* sends raise ``InvalidState`` exactly when the state forbids them;
* the events equal those of a second protocol fed all the same bytes at once
  (chunking invariance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from geventws.core.deflate import Deflate, DeflateOptions
from geventws.core.protocol import Close, Event, Ping, Pong, Protocol, Side, State
from geventws.exceptions import InvalidState, PayloadTooBig

from .common import DataProvider, Plan, provider
from .wire import CLOSE, PING, PONG, Frame, OutputChecker

__all__ = ["Config", "Script", "run"]

MAX_SIZES: list[Optional[int]] = [2**20, None, 0, 1, 125, 126, 1000, 65536]
THRESHOLDS = [0, 1, 16, 128, 2**31]
CLOSE_CODES = [1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1011, 3000, 4999]
COMPRESS: list[Optional[bool]] = [None, True, False]

# Step kinds: the low 4 bits of a step's first integer.
FEED_KINDS = (0, 1, 2, 3, 4, 5, 6, 15)
RECEIVE_EMPTY, SEND_TEXT, SEND_BINARY, SEND_PING, SEND_PONG = 7, 8, 9, 10, 11
SEND_CLOSE, SEND_FRAGMENT, EOF = 12, 13, 14
KEEP_PENDING = 0x80  # on a feed: don't settle ``pending`` before the next step


@dataclass
class Config:
    """What a protocol is built with; ``deflate`` is the codec's parameters:
    (local bits, remote bits, local no-context-takeover, remote no-context-takeover,
    threshold index, level, memory level)."""

    max_size: Optional[int] = 2**20
    deflate: Optional[tuple[int, int, bool, bool, int, int, int]] = None

    def codec(self) -> Optional[Deflate]:
        if self.deflate is None:
            return None
        local, remote, local_nct, remote_nct, threshold, level, mem_level = self.deflate
        options = DeflateOptions(max(9, local), mem_level, THRESHOLDS[threshold], level)
        return Deflate(
            options,
            local_window_bits=local,
            remote_window_bits=remote,
            local_no_context_takeover=local_nct,
            remote_no_context_takeover=remote_nct,
        )


def _read_config(fdp: DataProvider, side: Side, with_deflate: bool) -> Config:
    config = Config(MAX_SIZES[fdp.ConsumeIntInRange(0, len(MAX_SIZES) - 1)])
    if with_deflate:
        config.deflate = (
            # zlib can't compress with a window of 8: only a client may be told to.
            fdp.ConsumeIntInRange(8 if side is Side.CLIENT else 9, 15),
            fdp.ConsumeIntInRange(8, 15),
            bool(fdp.ConsumeIntInRange(0, 1)),
            bool(fdp.ConsumeIntInRange(0, 1)),
            fdp.ConsumeIntInRange(0, len(THRESHOLDS) - 1),
            fdp.ConsumeIntInRange(-1, 9),
            fdp.ConsumeIntInRange(1, 9),
        )
    return config


class Script:
    """Writes a target input step by step (for the seed corpus and the tests)."""

    def __init__(self, side: Side, config: Config) -> None:
        self.plan = Plan()
        plan = self.plan
        plan.int(MAX_SIZES.index(config.max_size), 0, len(MAX_SIZES) - 1)
        if config.deflate is not None:
            local, remote, local_nct, remote_nct, threshold, level, mem_level = config.deflate
            plan.int(local, 8 if side is Side.CLIENT else 9, 15).int(remote, 8, 15)
            plan.int(int(local_nct), 0, 1).int(int(remote_nct), 0, 1)
            plan.int(threshold, 0, len(THRESHOLDS) - 1).int(level, -1, 9)
            plan.int(mem_level, 1, 9)

    def feed(self, data: bytes, keep_pending: bool = False) -> Script:
        self.plan.int(KEEP_PENDING if keep_pending else 0, 0, 255)
        self.plan.int(len(data), 0, 65535).bytes(data)
        return self

    def receive_empty(self) -> Script:
        self.plan.int(RECEIVE_EMPTY, 0, 255)
        return self

    def _payload(self, size: int, seed: bytes) -> None:
        self.plan.int(size, 0, 70000).int(len(seed), 0, 64).bytes(seed)

    def send(self, data: Union[str, bytes], compress: Optional[bool] = None) -> Script:
        """Send ``data`` (a text message made of ``data`` itself when it is short)."""
        text = isinstance(data, str)
        raw = data.encode() if isinstance(data, str) else data
        self.plan.int((SEND_TEXT if text else SEND_BINARY) | COMPRESS.index(compress) << 4, 0, 255)
        self._payload(len(data), raw[:64])
        return self

    def ping(self, data: bytes, pong: bool = False) -> Script:
        self.plan.int(SEND_PONG if pong else SEND_PING, 0, 255)
        self.plan.int(len(data), 0, 125).bytes(data)
        return self

    def close(self, code: int, reason: bytes = b"") -> Script:
        self.plan.int(SEND_CLOSE, 0, 255).int(CLOSE_CODES.index(code), 0, len(CLOSE_CODES) - 1)
        self.plan.int(len(reason), 0, 123).bytes(reason)
        return self

    def fragment(
        self, data: Union[str, bytes], fin: bool, compress: Optional[bool] = None
    ) -> Script:
        binary = isinstance(data, bytes)
        raw = data if isinstance(data, bytes) else data.encode()
        op = SEND_FRAGMENT | binary << 4 | fin << 5 | COMPRESS.index(compress) << 6
        self.plan.int(op, 0, 255)
        self._payload(len(data), raw[:64])
        return self

    def eof(self) -> Script:
        self.plan.int(EOF, 0, 255)
        return self

    def encode(self) -> bytes:
        return self.plan.encode()


def _payload(fdp: DataProvider, text: bool) -> bytes:
    """An application message: the seed bytes repeated to the chosen size (characters
    for text, which is made valid UTF-8 first)."""
    size = fdp.ConsumeIntInRange(0, 70000)
    seed = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if text:
        chars = seed.decode("utf-8", "replace") or "x"
        return (chars * (size // len(chars) + 1))[:size].encode()
    seed = seed or b"\x00"
    return (seed * (size // len(seed) + 1))[:size]


def _check_event(event: Event, max_size: Optional[int]) -> None:
    kind = type(event)
    assert kind in (str, bytes, Ping, Pong, Close), f"unexpected event {event!r}"
    if kind is str:
        assert isinstance(event, str)
        size = len(event.encode("utf-8"))  # str from a UTF-8 decode: always encodable
    elif kind is bytes:
        assert isinstance(event, bytes)
        size = len(event)
    else:
        if isinstance(event, (Ping, Pong)):
            assert type(event.data) is bytes and len(event.data) <= 125
        return
    assert max_size is None or size <= max_size, f"message of {size} bytes > {max_size}"


def _is_message(event: Event) -> bool:
    return type(event) is str or type(event) is bytes


class _Run:
    def __init__(self, side: Side, config: Config) -> None:
        self.side = side
        self.config = config
        self.protocol = _SmallFrames(side, max_size=config.max_size, deflate=config.codec())
        codec = self.protocol.deflate
        self.checker = OutputChecker(
            masked=side is Side.CLIENT,
            window_bits=codec.local_window_bits if codec and codec.can_compress else None,
            fresh_context=bool(codec and codec.local_no_context_takeover),
        )
        self.events: list[Event] = []
        self.fed = bytearray()  # what a protocol fed everything at once must agree with
        self.sent_messages: list[Union[str, bytes]] = []
        self.fragments: list[bytes] = []
        self.fragment_text = False
        # An end of file while a close or failure was pending drops it: the
        # protocol fed everything at once (without EOF) goes further.
        self.eof_while_pending = False

    def check_state(self) -> None:
        """The state follows from what was sent, received and failed (RFC 6455 §7)."""
        p = self.protocol
        both = p.close_sent is not None and p.close_rcvd is not None
        either = p.close_sent is not None or p.close_rcvd is not None
        if both or p.error is not None or p.eof_rcvd:
            assert p.state is State.CLOSED and p.close_transport
        else:
            assert p.state is (State.CLOSING if either else State.OPEN)
            assert not p.close_transport
        assert p.output_pending is False  # flush() took everything

    def flush(self) -> list[Frame]:
        out = b"".join(self.protocol.data_to_send())
        frames = self.checker.feed(out)
        assert not self.checker.partial, "queued output ends inside a frame"
        assert self.checker.messages == self.sent_messages, "sent messages differ"
        return frames

    # -- receiving --------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        p = self.protocol
        close_sent_before = p.close_sent is not None
        ended_before = p.close_rcvd is not None or p.error is not None or p.eof_rcvd
        error_before = p.error
        if not p.eof_rcvd:
            self.fed += data
        events = _feed(p, data)  # must never raise
        frames = self.flush()
        self.events += events
        if ended_before:
            assert events == [] and frames == [], "input parsed after close/error/eof"
            assert not p.pending or not p.eof_rcvd, "pending after the end of the input"
            return
        for index, event in enumerate(events):
            _check_event(event, p.max_size)
            if isinstance(event, Close):
                assert index == len(events) - 1, "events after a Close"
                assert p.close_rcvd == event
                assert p.state is State.CLOSED  # the echo, if needed, is queued
        if p.pending:
            assert any(map(_is_message, events)), "pending without a message"
            assert p.error is None and p.close_rcvd is None
        expected: list[tuple[int, Optional[int], bytes]] = []
        if not close_sent_before:
            expected += [(PONG, None, e.data) for e in events if isinstance(e, Ping)]
        if p.close_rcvd is not None and not close_sent_before:
            code = p.close_rcvd.code
            expected.append((CLOSE, None if code == 1005 else code, b""))
        if p.error is not None and error_before is None:
            error = p.error
            assert error.code in (1002, 1007, 1009), f"close code {error.code} for {error!r}"
            assert (error.code == 1009) is isinstance(error, PayloadTooBig)
            assert not any(map(_is_message, events)), "messages returned with a failure"
            assert p.state is State.CLOSED and p.close_transport
            if not close_sent_before:
                expected.append((CLOSE, error.code, b""))
        got = [_summary(frame) for frame in frames]
        want = [(op, code, data if op == PONG else b"") for op, code, data in expected]
        assert got == want, f"queued {got}, expected {want}"

    def settle(self) -> None:
        if self.protocol.pending:
            self.receive(b"")
            assert not self.protocol.pending, "pending after receive_data(b'')"

    # -- sending ----------------------------------------------------------------------

    def _closed_for_data(self) -> bool:
        p = self.protocol
        return p.close_sent is not None or p.state is not State.OPEN

    def send_message(self, data: bytes, text: bool, compress: Optional[bool]) -> None:
        p = self.protocol
        refused = self._closed_for_data() or p.sending_fragments
        try:
            if text:
                p.send_text(data, compress)
            else:
                p.send_binary(data, compress)
        except InvalidState:
            assert refused, "send refused in an open state"
            assert self.flush() == []
            return
        assert not refused, "send accepted after closing"
        self.sent_messages.append(data.decode() if text else data)
        frames = self.flush()
        assert len(frames) == 1 and frames[0].fin and frames[0].opcode == (1 if text else 2)
        assert frames[0].rsv1 is self._compresses(len(data), compress)

    def _compresses(self, size: int, compress: Optional[bool]) -> bool:
        codec = self.protocol.deflate
        if codec is None or not codec.can_compress or compress is False:
            return False
        return compress is True or size >= codec.options.threshold

    def send_control(self, kind: int, data: bytes) -> None:
        p = self.protocol
        refused = self._closed_for_data()
        try:
            (p.send_ping if kind == SEND_PING else p.send_pong)(data)
        except InvalidState:
            assert refused
            assert self.flush() == []
            return
        assert not refused
        frames = self.flush()
        assert frames == [Frame(True, False, PING if kind == SEND_PING else PONG, data)]

    def send_close(self, code: int, reason: str) -> None:
        p = self.protocol
        refused = p.close_sent is not None or p.state is State.CLOSED
        had_close = p.close_rcvd is not None
        try:
            p.send_close(code, reason)
        except InvalidState:
            assert refused
            assert self.flush() == []
            return
        assert not refused
        assert p.state is (State.CLOSED if had_close else State.CLOSING)
        frames = self.flush()
        payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode()
        assert frames == [Frame(True, False, CLOSE, payload)]

    def send_fragment(self, data: bytes, binary: bool, fin: bool, compress: Optional[bool]) -> None:
        p = self.protocol
        refused = self._closed_for_data()
        first = not p.sending_fragments
        try:
            p.send_fragment(data, binary=binary, fin=fin, compress=compress)
        except InvalidState:
            assert refused
            assert self.flush() == []
            return
        assert not refused
        if first:
            self.fragment_text = not binary
            self.fragments = []
        self.fragments.append(data)
        if fin:
            joined = b"".join(self.fragments)
            self.sent_messages.append(joined.decode() if self.fragment_text else joined)
            self.fragments = []
        frames = self.flush()
        assert len(frames) == 1 and frames[0].fin is fin
        assert p.sending_fragments is not fin


def _summary(frame: Frame) -> tuple[int, Optional[int], bytes]:
    """A queued control frame as (opcode, close code or None, pong payload)."""
    if frame.opcode == CLOSE:
        code = int.from_bytes(frame.payload[:2], "big") if frame.payload else None
        return CLOSE, code, b""
    return frame.opcode, None, frame.payload if frame.opcode == PONG else b""


def _step(run: _Run, fdp: DataProvider) -> None:
    _act(run, fdp)
    run.check_state()


def _act(run: _Run, fdp: DataProvider) -> None:
    op = fdp.ConsumeIntInRange(0, 255)
    kind = op & 0x0F
    if kind in FEED_KINDS:
        run.receive(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 65535)))
        if not op & KEEP_PENDING:
            run.settle()
    elif kind == RECEIVE_EMPTY:
        run.receive(b"")
    elif kind in (SEND_TEXT, SEND_BINARY):
        data = _payload(fdp, kind == SEND_TEXT)
        run.send_message(data, kind == SEND_TEXT, COMPRESS[(op >> 4) % 3])
    elif kind in (SEND_PING, SEND_PONG):
        run.send_control(kind, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 125)))
    elif kind == SEND_CLOSE:
        code = CLOSE_CODES[fdp.ConsumeIntInRange(0, len(CLOSE_CODES) - 1)]
        reason = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 123)).decode("utf-8", "ignore")
        run.send_close(code, "" if code == 1005 else reason)
    elif kind == SEND_FRAGMENT:
        binary = bool(op & 0x10)
        # A continuation's kind is the message's: text fragments must be UTF-8.
        text = run.fragment_text if run.protocol.sending_fragments else not binary
        data = _payload(fdp, text)
        run.send_fragment(data, binary, bool(op & 0x20), COMPRESS[(op >> 6) % 3])
    else:
        assert kind == EOF
        # Sticky: a later end of file (ignored) must not hide the first one's.
        run.eof_while_pending |= run.protocol.pending
        run.protocol.receive_eof()
        assert run.protocol.state is State.CLOSED and run.protocol.close_transport
        assert run.flush() == []


class _SmallFrames(Protocol):
    """A protocol that reads frames of 16 bytes or more into their own buffer, as it
    does 64 KiB ones, so the fuzzer's short inputs reach that path."""

    __slots__ = ()
    large_frame = 16


def _feed(p: Protocol, data: bytes) -> list[Event]:
    """Give ``data`` to ``p`` in one call, the way the I/O layer does: read into the
    buffer ``receive_buffer()`` hands out when it holds ``data`` (as ``recv_into``
    would have), else through ``receive_data()`` (which then takes the bytes of that
    buffer back)."""
    view = p.receive_buffer()
    if view is not None and data and len(data) <= len(view):
        view[: len(data)] = data
        return p.received_into(len(data))
    return p.receive_data(data)


def run(data: bytes, side: Side, with_deflate: bool) -> None:
    """One fuzz input against a protocol of ``side``; raises AssertionError (or any
    exception the protocol let escape) on a broken invariant."""
    fdp = provider(data)
    config = _read_config(fdp, side, with_deflate)
    state = _Run(side, config)
    while fdp.remaining_bytes():
        _step(state, fdp)
    state.settle()
    # Chunking invariance: the same bytes at once give the same events and outcome.
    reference = Protocol(side, max_size=config.max_size, deflate=config.codec())
    events = reference.receive_data(bytes(state.fed))
    if reference.pending:
        events += reference.receive_data(b"")
    p = state.protocol
    if state.eof_while_pending:
        assert events[: len(state.events)] == state.events, f"{state.events!r} vs {events!r}"
        assert p.error is None and p.close_rcvd is None
        return
    assert events == state.events, f"chunked {state.events!r} != whole {events!r}"
    assert (reference.error and reference.error.code) == (p.error and p.error.code)
    assert reference.close_rcvd == p.close_rcvd
