"""Frames and the state machine: what one side sends, the other side reads back, however
the bytes are cut; close payloads; fragmented messages reassembled."""

from __future__ import annotations

import os
from typing import Union

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventws.core.frames import (
    MAX_CONTROL_PAYLOAD,
    Opcode,
    apply_mask,
    frame_header,
    is_valid_close_code,
    parse_close,
    serialize_close,
)
from geventws.core.protocol import Close, Event, Ping, Pong, Protocol, Side
from geventws.exceptions import ProtocolError

from .strategies import checks, chunks_of

SIDES = [Side.SERVER, Side.CLIENT]
close_codes = st.one_of(st.integers(1000, 1003), st.integers(1007, 1014), st.integers(3000, 4999))
close_reasons = st.text(max_size=123).filter(lambda r: len(r.encode()) <= 123)
control_payloads = st.binary(max_size=MAX_CONTROL_PAYLOAD)
messages = st.one_of(st.text(max_size=300), st.binary(max_size=300))


def peer_of(side: Side) -> Side:
    return Side.CLIENT if side is Side.SERVER else Side.SERVER


def transfer(sender: Protocol, receiver: Protocol) -> list[Event]:
    """Move everything ``sender`` queued into ``receiver``; return the events."""
    data = b"".join(sender.data_to_send())
    events = receiver.receive_data(data)
    while receiver.pending:
        events += receiver.receive_data(b"")
    return events


# -- frame_header / apply_mask → receive_data -----------------------------------------


@checks
@given(
    opcode=st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG]),
    payload=st.binary(max_size=70000),
    text=st.text(max_size=2000),
    side=st.sampled_from(SIDES),
)
def test_frame_header_then_payload_parses_back(
    opcode: Opcode, payload: bytes, text: str, side: Side
) -> None:
    if opcode == Opcode.TEXT:
        payload = text.encode()
    elif opcode >= 8:
        payload = payload[:MAX_CONTROL_PAYLOAD]
    mask = os.urandom(4) if side is Side.SERVER else None  # what the reader expects
    body = apply_mask(payload, mask) if mask is not None else payload
    frame = frame_header(0x80 | opcode, len(payload), mask) + body
    reader = Protocol(side, max_size=None)
    events = reader.receive_data(frame)
    expected = {
        Opcode.TEXT: text,
        Opcode.BINARY: payload,
        Opcode.PING: Ping(payload),
        Opcode.PONG: Pong(payload),
    }[opcode]
    assert events == [expected] and reader.error is None


@checks
@given(length=st.integers(0, 2**63 - 1), first=st.integers(0, 255), masked=st.booleans())
def test_frame_header_length_is_the_shortest_encoding(
    length: int, first: int, masked: bool
) -> None:
    header = frame_header(first, length, b"abcd" if masked else None)
    size = header[1] & 0x7F
    assert header[0] == first and bool(header[1] & 0x80) is masked
    if length < 126:
        assert size == length and len(header) == 2 + 4 * masked
    elif length < 65536:
        assert size == 126 and int.from_bytes(header[2:4], "big") == length
    else:
        assert size == 127 and int.from_bytes(header[2:10], "big") == length


# -- close payloads --------------------------------------------------------------------


@checks
@given(code=close_codes, reason=close_reasons)
def test_close_payload_round_trip(code: int, reason: str) -> None:
    assert parse_close(serialize_close(code, reason)) == (code, reason)


@checks
@given(payload=st.binary(max_size=125))
def test_parse_close_accepts_only_what_serializes_back(payload: bytes) -> None:
    try:
        code, reason = parse_close(payload)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007)
        return
    assert serialize_close(code, reason) == payload


@checks
@given(code=st.integers(0, 70000))
def test_serialize_close_refuses_codes_that_may_not_be_sent(code: int) -> None:
    if is_valid_close_code(code) or code == 1005:
        serialize_close(code)
    else:
        with pytest.raises(ValueError):
            serialize_close(code)


# -- Protocol.send_* → the peer's receive_data ------------------------------------------


@checks
@given(side=st.sampled_from(SIDES), sent=st.lists(messages, max_size=8), data=st.data())
def test_messages_sent_arrive_in_order_whatever_the_chunking(
    side: Side, sent: list[Union[str, bytes]], data: st.DataObject
) -> None:
    sender, receiver = Protocol(side), Protocol(peer_of(side), max_size=None)
    for message in sent:
        if isinstance(message, str):
            sender.send_text(message.encode())
        else:
            sender.send_binary(message)
    stream = b"".join(sender.data_to_send())
    events: list[Event] = []
    for chunk in data.draw(chunks_of(stream)):
        events += receiver.receive_data(chunk)
    assert events == sent and receiver.error is None


@checks
@given(
    side=st.sampled_from(SIDES),
    ping=control_payloads,
    pong=control_payloads,
    code=close_codes,
    reason=close_reasons,
)
def test_control_frames_and_the_closing_handshake(
    side: Side, ping: bytes, pong: bytes, code: int, reason: str
) -> None:
    a, b = Protocol(side), Protocol(peer_of(side))
    a.send_ping(ping)
    a.send_pong(pong)
    a.send_close(code, reason)
    assert transfer(a, b) == [Ping(ping), Pong(pong), Close(code, reason)]
    # b answered the ping and echoed the close code with its reason.
    assert transfer(b, a) == [Pong(ping), Close(code, reason)]
    assert a.close_transport and b.close_transport


@checks
@given(side=st.sampled_from(SIDES), message=messages, data=st.data())
def test_fragments_reassemble_into_the_message(
    side: Side, message: Union[str, bytes], data: st.DataObject
) -> None:
    """Cut anywhere, even inside a UTF-8 sequence, with pings in between."""
    raw = message.encode() if isinstance(message, str) else message
    pieces = data.draw(chunks_of(raw))
    sender, receiver = Protocol(side), Protocol(peer_of(side))
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        sender.send_fragment(piece, binary=isinstance(message, bytes), fin=last)
        if data.draw(st.booleans()):
            sender.send_ping(b"between")
    events = transfer(sender, receiver)
    assert [e for e in events if not isinstance(e, Ping)] == [message]
    assert not sender.sending_fragments


@checks
@given(side=st.sampled_from(SIDES), sent=st.lists(messages, max_size=6), data=st.data())
def test_chunking_gives_the_same_events_as_one_read(
    side: Side, sent: list[Union[str, bytes]], data: st.DataObject
) -> None:
    """Messages, pings, a close frame and trailing bytes: any split, same events and
    the same bytes queued in answer."""
    sender = Protocol(side)
    for message in sent:
        if isinstance(message, str):
            sender.send_fragment(message.encode(), binary=False, fin=True)
        else:
            sender.send_binary(message)
        sender.send_ping(b"p")
    sender.send_close(1001, "bye")
    stream = b"".join(sender.data_to_send()) + data.draw(st.binary(max_size=20))
    whole = Protocol(peer_of(side), max_size=None)
    expected = whole.receive_data(stream)
    while whole.pending:
        expected += whole.receive_data(b"")
    split = Protocol(peer_of(side), max_size=None)
    events: list[Event] = []
    for chunk in data.draw(chunks_of(stream)):
        events += split.receive_data(chunk)
        while split.pending:
            events += split.receive_data(b"")
    assert events == expected and events[-1] == Close(1001, "bye")
    assert len(events) == 2 * len(sent) + 1
    unmask = Protocol(side, max_size=None)
    answers_whole = unmask.receive_data(b"".join(whole.data_to_send()))
    unmask = Protocol(side, max_size=None)
    assert unmask.receive_data(b"".join(split.data_to_send())) == answers_whole
