"""The sans-I/O state machine, fed byte literals (RFC 6455 §5-§7)."""

from __future__ import annotations

import struct

import pytest

from geventws.core.protocol import Close, Ping, Pong, Protocol, Side, State
from geventws.exceptions import InvalidState

from .utils import client_frame

MASK = b"\x01\x02\x03\x04"


def server(max_size: int | None = 2**20) -> Protocol:
    return Protocol(Side.SERVER, max_size=max_size)


def frame(opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    return client_frame(opcode, payload, mask=MASK, **kwargs)  # type: ignore[arg-type]


def sent(protocol: Protocol) -> bytes:
    return b"".join(protocol.data_to_send())


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server (unmasked) close frame, as the protocol should write it."""
    payload = struct.pack("!H", code) + reason
    return bytes([0x88, len(payload)]) + payload


def assert_failed(protocol: Protocol, code: int) -> None:
    assert protocol.error is not None and protocol.error.code == code
    out = sent(protocol)
    if protocol.side is Side.CLIENT:  # masked: let a server read it
        events = server().receive_data(out)
        assert isinstance(events[0], Close) and events[0].code == code, events
    else:
        assert out[0] == 0x88 and out[2:4] == struct.pack("!H", code), out
    assert protocol.close_transport


# -- §5.2 base framing ---------------------------------------------------------------


def test_text_message_single_frame() -> None:
    p = server()
    assert p.receive_data(frame(1, "héllo".encode())) == ["héllo"]


def test_binary_message_single_frame() -> None:
    p = server()
    assert p.receive_data(frame(2, b"\x00\xff")) == [b"\x00\xff"]


def test_empty_messages() -> None:
    p = server()
    assert p.receive_data(frame(1) + frame(2)) == ["", b""]


@pytest.mark.parametrize("size", [125, 126, 127, 65535, 65536, 70000])
def test_length_encodings(size: int) -> None:
    p = server()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert p.receive_data(frame(2, data)) == [data]


def test_frame_split_at_every_byte() -> None:
    data = frame(1, b"hello world") + frame(2, b"\x01" * 300)
    p = server()
    events: list[object] = []
    for i in range(len(data)):
        events += p.receive_data(data[i : i + 1])
    assert events == ["hello world", b"\x01" * 300]


def test_many_frames_in_one_chunk() -> None:
    p = server()
    assert p.receive_data(b"".join(frame(1, str(i).encode()) for i in range(50))) == [
        str(i) for i in range(50)
    ]


def test_unmasked_client_frame_fails_1002() -> None:
    p = server()
    p.receive_data(client_frame(1, b"hi", mask=None))
    assert_failed(p, 1002)


def test_masked_server_frame_fails_1002_on_client() -> None:
    p = Protocol(Side.CLIENT)
    p.receive_data(client_frame(1, b"hi"))
    assert_failed(p, 1002)


def test_client_receives_unmasked_frames() -> None:
    p = Protocol(Side.CLIENT)
    assert p.receive_data(b"\x81\x02hi") == ["hi"]


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
def test_reserved_bits_fail_1002(rsv: int) -> None:
    p = server()
    p.receive_data(frame(1, b"x", rsv=rsv))
    assert_failed(p, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes_fail_1002(opcode: int) -> None:
    p = server()
    p.receive_data(frame(opcode))
    assert_failed(p, 1002)


def test_length_with_most_significant_bit_fails_1002() -> None:
    p = Protocol(Side.SERVER, max_size=None)
    p.receive_data(b"\x82\xff" + b"\x80" + b"\x00" * 7 + MASK)
    assert_failed(p, 1002)


def test_messages_before_an_error_come_first_then_the_failure() -> None:
    p = server()
    events = p.receive_data(frame(1, b"ok") + frame(5))
    assert events == ["ok"]
    assert p.pending and p.error is None and sent(p) == b""  # the handler may answer first
    p.send_text(b"answer")
    assert sent(p) == b"\x81\x06answer"
    assert p.receive_data(b"") == []
    assert_failed(p, 1002)
    assert not p.pending


def test_messages_before_a_close_come_first_then_the_close() -> None:
    p = server()
    events = p.receive_data(frame(1, b"a") + frame(2, b"b") + frame(8, b"\x03\xe8"))
    assert events == ["a", b"b"] and p.pending and p.state is State.OPEN
    assert p.receive_data(b"") == [Close(1000, "")]
    assert sent(p) == b"\x88\x02\x03\xe8" and p.state is State.CLOSED


def test_close_alone_is_not_pending() -> None:
    p = server()
    assert p.receive_data(frame(9) + frame(8, b"\x03\xe8")) == [Ping(b""), Close(1000, "")]
    assert not p.pending


def test_input_after_failure_is_ignored() -> None:
    p = server()
    p.receive_data(frame(5))
    sent(p)
    assert p.receive_data(frame(1, b"late")) == []
    assert sent(p) == b""


# -- §5.4 fragmentation --------------------------------------------------------------


def test_fragmented_text_message() -> None:
    p = server()
    events = p.receive_data(
        frame(1, b"fra", fin=False) + frame(0, b"gm", fin=False) + frame(0, b"ent")
    )
    assert events == ["fragment"]


def test_fragmented_binary_message() -> None:
    p = server()
    events = p.receive_data(frame(2, b"\x01", fin=False) + frame(0, b"\x02"))
    assert events == [b"\x01\x02"]


def test_continuation_without_start_fails_1002() -> None:
    p = server()
    p.receive_data(frame(0, b"x"))
    assert_failed(p, 1002)


def test_new_data_frame_inside_fragmented_message_fails_1002() -> None:
    p = server()
    p.receive_data(frame(1, b"a", fin=False) + frame(1, b"b"))
    assert_failed(p, 1002)


def test_ping_inside_fragmented_message_is_answered_at_once() -> None:
    p = server()
    events = p.receive_data(frame(1, b"a", fin=False) + frame(9, b"p"))
    assert [type(e) for e in events] == [Ping]
    assert sent(p) == b"\x8a\x01p"
    assert p.receive_data(frame(0, b"b")) == ["ab"]


def test_fragmented_control_frame_fails_1002() -> None:
    p = server()
    p.receive_data(frame(9, b"p", fin=False))
    assert_failed(p, 1002)


# -- §5.5 control frames -------------------------------------------------------------


def test_ping_is_answered_with_same_payload() -> None:
    p = server()
    events = p.receive_data(frame(9, b"payload"))
    assert isinstance(events[0], Ping) and events[0].data == b"payload"
    assert sent(p) == b"\x8a\x07payload"


def test_ping_with_125_bytes_is_fine() -> None:
    p = server()
    p.receive_data(frame(9, b"x" * 125))
    assert sent(p) == b"\x8a\x7d" + b"x" * 125


def test_control_frame_over_125_bytes_fails_1002() -> None:
    p = server()
    p.receive_data(frame(9, b"x" * 126))
    assert_failed(p, 1002)


def test_unsolicited_pong_is_reported_not_answered() -> None:
    p = server()
    events = p.receive_data(frame(10, b"x"))
    assert isinstance(events[0], Pong)
    assert sent(p) == b""


# -- §5.6 UTF-8 ----------------------------------------------------------------------


def test_invalid_utf8_single_frame_fails_1007() -> None:
    p = server()
    p.receive_data(frame(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"))
    assert_failed(p, 1007)


def test_invalid_utf8_fails_fast_in_first_fragment() -> None:
    p = server()
    p.receive_data(frame(1, b"ok\xff", fin=False))  # the message is not finished yet
    assert_failed(p, 1007)


def test_utf8_sequence_split_across_fragments_is_valid() -> None:
    p = server()
    euro = "€".encode()
    events = p.receive_data(
        frame(1, euro[:1], fin=False) + frame(0, euro[1:2], fin=False) + frame(0, euro[2:])
    )
    assert events == ["€"]


def test_truncated_utf8_at_end_of_message_fails_1007() -> None:
    p = server()
    p.receive_data(frame(1, b"a", fin=False) + frame(0, "€".encode()[:2]))
    assert_failed(p, 1007)


def test_binary_messages_are_not_utf8_checked() -> None:
    p = server()
    assert p.receive_data(frame(2, b"\xff\xfe")) == [b"\xff\xfe"]


# -- limits --------------------------------------------------------------------------


def test_message_over_max_size_fails_1009_from_the_header() -> None:
    p = server(max_size=100)
    # Only the header: the limit applies before the payload is buffered.
    p.receive_data(frame(2, b"x" * 101)[:8])
    assert_failed(p, 1009)


def test_fragmented_message_over_max_size_fails_1009() -> None:
    p = server(max_size=100)
    p.receive_data(frame(2, b"x" * 60, fin=False) + frame(0, b"x" * 41))
    assert_failed(p, 1009)


def test_message_at_max_size_passes() -> None:
    p = server(max_size=100)
    assert p.receive_data(frame(2, b"x" * 60, fin=False) + frame(0, b"x" * 40)) == [b"x" * 100]


def test_no_max_size() -> None:
    p = server(max_size=None)
    assert p.receive_data(frame(2, b"x" * 300000)) == [b"x" * 300000]


# -- §7 closing ----------------------------------------------------------------------


def test_close_is_echoed_with_its_code_and_reason() -> None:
    p = server()
    events = p.receive_data(frame(8, b"\x0f\xa0bye"))
    assert events == [Close(4000, "bye")]
    assert sent(p) == b"\x88\x05\x0f\xa0bye"
    assert p.state is State.CLOSED and p.close_transport


def test_close_without_code_is_echoed_empty() -> None:
    p = server()
    assert p.receive_data(frame(8)) == [Close(1005, "")]
    assert sent(p) == b"\x88\x00"


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_code_fails_1002(code: int) -> None:
    p = server()
    p.receive_data(frame(8, struct.pack("!H", code)))
    assert_failed(p, 1002)


def test_one_byte_close_payload_fails_1002() -> None:
    p = server()
    p.receive_data(frame(8, b"\x03"))
    assert_failed(p, 1002)


def test_close_reason_invalid_utf8_fails_1007() -> None:
    p = server()
    p.receive_data(frame(8, b"\x03\xe8\xff"))
    assert_failed(p, 1007)


def test_data_after_close_is_ignored() -> None:
    p = server()
    events = p.receive_data(frame(8, b"\x03\xe8") + frame(1, b"late"))
    assert events == [Close(1000, "")]
    assert p.receive_data(frame(1, b"later")) == []


def test_we_close_first_then_peer_answers() -> None:
    p = server()
    p.send_close(1000, "done")
    assert sent(p) == b"\x88\x06\x03\xe8done"
    assert p.state is State.CLOSING and not p.close_transport
    # Messages the peer sent before seeing our close still arrive; pings aren't answered.
    assert p.receive_data(frame(1, b"in flight") + frame(9)) == ["in flight", Ping(b"")]
    assert sent(p) == b""
    events = p.receive_data(frame(8, b"\x03\xe8"))
    assert Close(1000, "") in events
    assert sent(p) == b""  # no second close frame
    assert p.state is State.CLOSED


def test_fragmented_message_after_our_close_is_delivered_then_the_answer() -> None:
    p = server()
    p.send_close(1000)
    sent(p)
    events = p.receive_data(frame(1, b"a", fin=False) + frame(0, b"b") + frame(8, b"\x03\xe8"))
    assert events == ["ab"] and p.pending
    assert p.receive_data(b"") == [Close(1000, "")]


def test_send_after_close_raises_invalid_state() -> None:
    p = server()
    p.send_close()
    with pytest.raises(InvalidState):
        p.send_text(b"x")
    with pytest.raises(InvalidState):
        p.send_close()


def test_send_close_validates_code() -> None:
    p = server()
    with pytest.raises(ValueError):
        p.send_close(1006)
    assert p.state is State.OPEN


def test_eof_closes() -> None:
    p = server()
    p.receive_eof()
    assert p.state is State.CLOSED and p.close_transport
    assert p.receive_data(frame(1, b"x")) == []


# -- sending -------------------------------------------------------------------------


def test_server_frames_are_unmasked() -> None:
    p = server()
    p.send_text(b"hi")
    p.send_binary(b"\x00")
    p.send_ping(b"p")
    p.send_pong(b"q")
    assert sent(p) == b"\x81\x02hi\x82\x01\x00\x89\x01p\x8a\x01q"


def test_large_server_frame_keeps_payload_separate() -> None:
    p = server()
    payload = b"x" * 100000
    p.send_binary(payload)
    chunks = p.data_to_send()
    assert chunks[0] == b"\x82\x7f" + struct.pack("!Q", 100000)
    assert chunks[1] is payload


def test_client_frames_are_masked_with_fresh_keys() -> None:
    p = Protocol(Side.CLIENT)
    p.send_text(b"hello")
    p.send_text(b"hello")
    header1, body1, header2, body2 = p.data_to_send()
    assert header1[:2] == b"\x81\x85" and header2[:2] == b"\x81\x85"
    assert header1[2:] != header2[2:]  # a fresh 4-byte key per frame
    assert body1 != b"hello" or header1[2:] == b"\x00" * 4
    assert server().receive_data(header1 + body1 + header2 + body2) == ["hello", "hello"]


def test_control_payload_limits_on_send() -> None:
    p = server()
    with pytest.raises(ValueError):
        p.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        p.send_pong(b"x" * 126)


# -- large frames read into a buffer of their own --------------------------------------


def test_large_frame_is_read_into_its_own_buffer() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = frame(2, payload) + frame(1, b"after")
    protocol = server()
    assert protocol.receive_buffer() is None  # nothing announced yet
    assert protocol.receive_data(data[:100_000]) == []
    assert protocol.receive_buffer() is None  # less than a quarter of the frame
    assert protocol.receive_data(data[100_000:300_000]) == []
    view = protocol.receive_buffer()
    assert view is not None and len(view) == len(frame(2, payload)) - 300_000
    rest = data[300_000:]
    events = []
    while (view := protocol.receive_buffer()) is not None:
        count = min(len(view), 300_000)  # recv_into, in pieces
        view[:count] = rest[:count]
        rest = rest[count:]
        events += protocol.received_into(count)
    assert events == [payload]
    assert protocol.receive_data(rest) == ["after"]


def test_large_frame_buffer_only_after_a_quarter_arrived() -> None:
    """A header alone doesn't make the protocol allocate the frame's size."""
    protocol = server(max_size=None)
    announced = frame(2, b"x" * 2**22)  # 4 MiB announced
    assert protocol.receive_data(announced[:20]) == []
    assert protocol.receive_buffer() is None
    assert protocol.receive_data(announced[20 : 2**20]) == []
    assert protocol.receive_buffer() is None  # just under a quarter
    assert protocol.receive_data(announced[2**20 : 2**20 + 100]) == []
    assert protocol.receive_buffer() is not None  # a quarter is here


def test_large_frame_buffer_mixed_with_receive_data() -> None:
    payload = b"y" * 200_000
    data = frame(2, payload) + frame(1, b"next")
    protocol = server()
    assert protocol.receive_data(data[:60_000]) == []
    view = protocol.receive_buffer()
    assert view is not None
    view[:1000] = data[60_000:61_000]
    assert protocol.received_into(1000) == []
    # Fed as bytes now: what the buffer holds is taken back, in order.
    assert protocol.receive_data(data[61_000:]) == [payload, "next"]
    assert protocol.receive_buffer() is None


def test_large_frame_buffer_dropped_when_the_connection_fails() -> None:
    protocol = server()
    data = frame(2, b"z" * 100_000)
    assert protocol.receive_data(data[:50_000]) == []
    view = protocol.receive_buffer()
    assert view is not None
    protocol.receive_eof()  # the transport ended meanwhile
    assert protocol.receive_buffer() is None
    view[:10] = data[50_000:50_010]
    assert protocol.received_into(10) == []  # ignored
