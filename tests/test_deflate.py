"""permessage-deflate (RFC 7692) in the sans-I/O core: the codec and the protocol with
compression (negotiation is in test_deflate_negotiation.py).

Compressed frames sent *to* geventws are built here with the standard library's zlib
directly, and geventws' output is inflated with zlib directly, so the tests don't only
check geventws against itself.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import tracemalloc
import zlib
from typing import Optional

import pytest

from geventws.core.deflate import (
    Deflate,
    DeflateOptions,
    negotiate_client,
    negotiate_server,
)
from geventws.core.headers import Headers
from geventws.core.protocol import Close, Ping, Protocol, Side
from geventws.core.shared import SharedMessage
from geventws.exceptions import (
    InvalidState,
    PayloadTooBig,
    ProtocolError,
)

from .utils import client_frame

MASK = b"\x01\x02\x03\x04"
OPTIONS = DeflateOptions()
PMD = "permessage-deflate"


def offer(*values: str) -> Headers:
    return Headers([("Sec-WebSocket-Extensions", value) for value in values])


def deflate(data: bytes, wbits: int = 15) -> bytes:
    """``data`` compressed as one permessage-deflate message, by zlib itself."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(payload: bytes, decompressor: Optional[zlib._Decompress] = None) -> bytes:
    decompressor = decompressor or zlib.decompressobj(-15)
    return decompressor.decompress(payload + b"\x00\x00\xff\xff")


def server_frames(out: bytes) -> list[tuple[int, bytes]]:
    """Split a server's output into (first byte, payload)."""
    frames = []
    pos = 0
    while pos < len(out):
        b0, b1 = out[pos], out[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            (length,) = struct.unpack_from("!H", out, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", out, pos)
            pos += 8
        frames.append((b0, out[pos : pos + length]))
        pos += length
    return frames


def deflate_server(
    value: str = "permessage-deflate", options: DeflateOptions = OPTIONS, **kwargs: object
) -> Protocol:
    negotiated = negotiate_server(offer(value), options)
    assert negotiated is not None
    return Protocol(Side.SERVER, deflate=negotiated[1], **kwargs)  # type: ignore[arg-type]


# -- round trips, every parameter combination ------------------------------------------

MESSAGES = [
    b"",
    b"x" * 200,
    "Lorem ipsum dolor sit amet, κόσμε. ".encode() * 40,
    os.urandom(3000),
    bytes(range(256)) * 600,
    b'{"id": 1, "name": "a fairly typical json message", "tags": ["x", "y"]}' * 3,
]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("server_reset", "client_reset", "server_bits", "client_bits"),
    list(itertools.product([False, True], [False, True], [None, 9, 15], [None, True, 9, 15])),
)
def test_round_trips_with_every_parameter_set(
    server_reset: bool,
    client_reset: bool,
    server_bits: Optional[int],
    client_bits: Optional[object],
) -> None:
    params = [PMD]
    if server_reset:
        params.append("server_no_context_takeover")
    if client_reset:
        params.append("client_no_context_takeover")
    if server_bits is not None:
        params.append(f"server_max_window_bits={server_bits}")
    if client_bits is True:
        params.append("client_max_window_bits")
    elif client_bits is not None:
        params.append(f"client_max_window_bits={client_bits}")
    options = DeflateOptions(threshold=0)
    negotiated = negotiate_server(offer("; ".join(params)), options)
    assert negotiated is not None
    agreed, server_codec = negotiated
    client_codec = negotiate_client(offer(agreed), options)
    assert client_codec is not None
    server = Protocol(Side.SERVER, max_size=None, deflate=server_codec)
    client = Protocol(Side.CLIENT, max_size=None, deflate=client_codec)
    for round_ in range(2):  # the second round exercises the context (or its absence)
        for index, message in enumerate(MESSAGES):
            binary = index % 2 == 1 or not _is_utf8(message)
            (client.send_binary if binary else client.send_text)(message)
            wire = b"".join(client.data_to_send())
            assert wire[0] & 0x40, "client messages must be compressed (RSV1)"
            expected = message if binary else message.decode()
            assert server.receive_data(wire) == [expected], (round_, index)
            (server.send_binary if binary else server.send_text)(message)
            wire = b"".join(server.data_to_send())
            assert wire[0] & 0x40
            assert client.receive_data(wire) == [expected], (round_, index)


def test_context_takeover_makes_repeats_small_and_no_context_takeover_does_not() -> None:
    message = os.urandom(2000)  # incompressible alone, but repeats from the window
    with_context = deflate_server(options=DeflateOptions(window_bits=15, threshold=0))
    without = deflate_server(
        f"{PMD}; server_no_context_takeover", DeflateOptions(window_bits=15, threshold=0)
    )
    sizes: dict[str, list[int]] = {"with": [], "without": []}
    for name, protocol in (("with", with_context), ("without", without)):
        decompressor = zlib.decompressobj(-15)
        for _ in range(3):
            protocol.send_binary(message)
            ((b0, payload),) = server_frames(b"".join(protocol.data_to_send()))
            assert b0 == 0xC2
            if name == "without":
                decompressor = zlib.decompressobj(-15)  # each message stands alone
            assert inflate(payload, decompressor) == message
            sizes[name].append(len(payload))
    assert sizes["with"][0] > 2000 and max(sizes["with"][1:]) < 100
    assert min(sizes["without"]) > 2000


def test_server_inflates_with_context_takeover_across_messages() -> None:
    protocol = deflate_server()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    for text in ["hello hello hello", "hello hello hello", "again hello"]:
        payload = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
        events = protocol.receive_data(client_frame(1, payload[:-4], rsv=4, mask=MASK))
        assert events == [text]


def test_server_resets_inflater_when_client_has_no_context_takeover() -> None:
    protocol = deflate_server(f"{PMD}; client_no_context_takeover")
    for _ in range(3):
        events = protocol.receive_data(client_frame(2, deflate(b"abc" * 100), rsv=4, mask=MASK))
        assert events == [b"abc" * 100]


# -- fragmentation and control frames --------------------------------------------------


@pytest.mark.parametrize("fragment", [1, 7, 100, 4096])
def test_fragmented_compressed_message_with_interleaved_pings(fragment: int) -> None:
    protocol = deflate_server(max_size=None, max_fragments=None)  # one-byte fragments too
    text = " κόσμε ".join(str(i * i) for i in range(2000))
    payload = deflate(text.encode())
    assert len(payload) > 4096
    pieces = [payload[i : i + fragment] for i in range(0, len(payload), fragment)]
    wire = b""
    for index, piece in enumerate(pieces):
        first = index == 0
        last = index == len(pieces) - 1
        wire += client_frame(1 if first else 0, piece, fin=last, rsv=4 if first else 0, mask=MASK)
        if index == (len(pieces) - 1) // 2:
            wire += client_frame(9, b"ping!", mask=MASK)
    events = protocol.receive_data(wire)
    assert events == [Ping(b"ping!"), text]
    assert b"".join(protocol.data_to_send()) == b"\x8a\x05ping!"


def test_compressed_message_split_at_every_byte() -> None:
    protocol = deflate_server()
    wire = client_frame(1, deflate("κόσμε".encode() * 50), rsv=4, mask=MASK)
    events = []
    for byte in range(len(wire)):
        events += protocol.receive_data(wire[byte : byte + 1])
    assert events == ["κόσμε" * 50]


def test_uncompressed_messages_still_accepted_with_deflate() -> None:
    protocol = deflate_server()
    assert protocol.receive_data(client_frame(1, b"plain", mask=MASK)) == ["plain"]
    frames = client_frame(2, b"ab", fin=False, mask=MASK) + client_frame(0, b"c", mask=MASK)
    assert protocol.receive_data(frames) == [b"abc"]


def test_control_frames_are_never_compressed() -> None:
    protocol = deflate_server(options=DeflateOptions(threshold=0))
    protocol.send_ping(b"p" * 100)
    protocol.send_pong(b"q" * 100)
    protocol.send_close(1000, "bye" * 30)
    frames = server_frames(b"".join(protocol.data_to_send()))
    assert [b0 for b0, _ in frames] == [0x89, 0x8A, 0x88]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (client_frame(0, b"x", rsv=4, mask=MASK), "continuation"),
        (client_frame(9, b"x", rsv=4, mask=MASK), "control"),
        (client_frame(1, b"x", rsv=2, mask=MASK), "reserved"),
        (client_frame(1, b"x", rsv=6, mask=MASK), "reserved"),
    ],
)
def test_bad_reserved_bits_with_deflate_fail_1002(wire: bytes, reason: str) -> None:
    protocol = deflate_server()
    if reason == "continuation":
        wire = client_frame(1, deflate(b"ab"), fin=False, rsv=4, mask=MASK) + wire
    assert protocol.receive_data(wire) == []
    assert protocol.error is not None and protocol.error.code == 1002
    assert reason in str(protocol.error)


def test_rsv1_without_negotiation_fails_1002() -> None:
    protocol = Protocol(Side.SERVER)
    protocol.receive_data(client_frame(1, deflate(b"ab"), rsv=4, mask=MASK))
    assert protocol.error is not None and protocol.error.code == 1002


# -- sending: threshold, per-message override, window 8 --------------------------------


def test_threshold_and_per_message_override() -> None:
    protocol = deflate_server(options=DeflateOptions(threshold=100))
    protocol.send_text(b"a" * 99)
    protocol.send_text(b"a" * 100)
    protocol.send_binary(b"a" * 5, compress=True)
    protocol.send_binary(b"a" * 1000, compress=False)
    frames = server_frames(b"".join(protocol.data_to_send()))
    assert [b0 for b0, _ in frames] == [0x81, 0xC1, 0xC2, 0x82]
    decompressor = zlib.decompressobj(-15)
    assert inflate(frames[1][1], decompressor) == b"a" * 100
    assert inflate(frames[2][1], decompressor) == b"a" * 5
    assert frames[3][1] == b"a" * 1000


def test_client_told_window_8_sends_uncompressed() -> None:
    codec = negotiate_client(offer(f"{PMD}; client_max_window_bits=8"), OPTIONS)
    client = Protocol(Side.CLIENT, deflate=codec)
    client.send_text(b"z" * 1000, compress=True)
    wire = b"".join(client.data_to_send())
    assert not wire[0] & 0x40
    server = deflate_server(f"{PMD}; client_max_window_bits=8")
    assert server.receive_data(wire) == ["z" * 1000]


def test_client_frames_are_masked_and_compressed() -> None:
    codec = negotiate_client(offer(PMD), DeflateOptions(threshold=0))
    client = Protocol(Side.CLIENT, deflate=codec)
    client.send_text(b"hello" * 20)
    wire = b"".join(client.data_to_send())
    assert wire[0] == 0xC1 and wire[1] & 0x80
    mask, payload = wire[2:6], wire[6:]
    unmasked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert inflate(unmasked) == b"hello" * 20


def test_compress_shared_is_readable_by_any_peer_context() -> None:
    """A broadcast frame (fresh stream) decodes after whatever the peer saw before,
    and the connection's own later messages decode after it once its context is gone."""
    codec = negotiate_server(offer(PMD), DeflateOptions(threshold=0))
    assert codec is not None
    protocol = Protocol(Side.SERVER, deflate=codec[1])
    decompressor = zlib.decompressobj(-15)
    message = b"shared message " * 50
    protocol.send_text(message)
    ((_, first),) = server_frames(b"".join(protocol.data_to_send()))
    assert inflate(first, decompressor) == message
    shared = codec[1].compress_shared(message)
    codec[1].forget_context()
    assert inflate(shared, decompressor) == message
    protocol.send_text(message)
    ((_, after),) = server_frames(b"".join(protocol.data_to_send()))
    assert inflate(after, decompressor) == message


def test_shared_frames_follow_each_connection_s_settings_in_a_row_or_interleaved() -> None:
    """Connections with equal settings share one compressed frame (their codecs hold
    the same settings object); with two settings taken in a row or alternately, each
    connection gets the frame its own window decodes, and a connection without
    compression the plain frame."""
    options = DeflateOptions(threshold=0)
    wide, narrow = PMD, f"{PMD}; server_max_window_bits=10"
    servers = {
        name: deflate_server(value, options)
        for name, value in [("a", wide), ("a2", wide), ("b", narrow), ("b2", narrow)]
    }
    servers["plain"] = Protocol(Side.SERVER)
    codecs = {name: server.deflate for name, server in servers.items()}
    assert codecs["a"] is not None and codecs["a2"] is not None and codecs["b"] is not None
    assert codecs["a"].settings is codecs["a2"].settings
    assert codecs["a"].settings != codecs["b"].settings
    # Repeated at a distance of 2,000 bytes: the 12-bit window (the default) reaches
    # back far enough to find the repeat, the 10-bit one doesn't.
    text = random.Random(1).randbytes(1000).hex() * 2
    for order in (["a", "a2", "b", "b2", "plain"], ["a", "b", "a2", "b2", "plain"]):
        message = SharedMessage(text)
        frames = {name: servers[name].send_shared(message) for name in order}
        assert frames["a"] is frames["a2"] and frames["b"] is frames["b2"]
        assert len(frames["a"]) < len(frames["b"]) < len(text)
        for name in ("a", "b"):
            codec = codecs[name]
            assert codec is not None
            ((first, payload),) = server_frames(frames[name])
            assert first == 0xC1  # FIN, RSV1, text
            decoder = zlib.decompressobj(-codec.local_window_bits)
            assert inflate(payload, decoder) == text.encode()
        assert frames["plain"] == message.frame
        assert server_frames(frames["plain"]) == [(0x81, text.encode())]


# -- safety: bombs and corrupt streams -------------------------------------------------


def test_decompression_bomb_closes_1009_without_inflating_it_all() -> None:
    bomb = deflate(bytes(64 * 2**20))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 2**17
    protocol = deflate_server(max_size=2**20)
    tracemalloc.start()
    try:
        events = protocol.receive_data(client_frame(2, bomb, rsv=4, mask=MASK))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == []
    assert isinstance(protocol.error, PayloadTooBig) and protocol.error.code == 1009
    assert peak < 8 * 2**20, f"inflated {peak} bytes for a 1 MiB limit"
    out = b"".join(protocol.data_to_send())
    assert out[0] == 0x88 and out[2:4] == b"\x03\xf1"


def test_decompression_limit_counts_across_fragments() -> None:
    payload = deflate(bytes(3000))
    protocol = deflate_server(max_size=2000)
    half = len(payload) // 2
    wire = client_frame(2, payload[:half], fin=False, rsv=4, mask=MASK) + client_frame(
        0, payload[half:], mask=MASK
    )
    assert protocol.receive_data(wire) == []
    assert protocol.error is not None and protocol.error.code == 1009


def test_message_exactly_at_max_size_once_inflated_is_accepted() -> None:
    protocol = deflate_server(max_size=5000)
    assert protocol.receive_data(client_frame(2, deflate(bytes(5000)), rsv=4, mask=MASK)) == [
        bytes(5000)
    ]


def test_codec_limit_directly() -> None:
    codec = Deflate(OPTIONS, local_window_bits=12, remote_window_bits=15)
    with pytest.raises(PayloadTooBig):
        codec.decompress(deflate(bytes(10_001)), True, 10_000)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # invalid block type
        deflate(b"hello")[:-1] + b"\x00\x00\x00",  # damaged
        # A final block (BFINAL) followed by more data.
        zlib.compressobj(6, zlib.DEFLATED, -15).compress(b"x")
        + zlib.compressobj(6, zlib.DEFLATED, -15).flush()
        + b"junk",
    ],
)
def test_corrupt_stream_closes_1007(payload: bytes) -> None:
    protocol = deflate_server()
    protocol.receive_data(client_frame(1, payload, rsv=4, mask=MASK))
    assert isinstance(protocol.error, ProtocolError) and protocol.error.code == 1007
    assert protocol.close_transport


def test_final_block_then_a_new_stream_is_accepted() -> None:
    """A peer may end its stream with BFINAL set; the next message starts afresh."""
    protocol = deflate_server()
    for text in ["one", "two"]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = compressor.compress(text.encode()) + compressor.flush()
        assert protocol.receive_data(client_frame(1, payload, rsv=4, mask=MASK)) == [text]


def test_invalid_utf8_inside_compressed_text_closes_1007() -> None:
    protocol = deflate_server()
    protocol.receive_data(client_frame(1, deflate(b"ok \xff"), rsv=4, mask=MASK))
    assert protocol.error is not None and protocol.error.code == 1007


def test_compressed_frame_larger_than_any_possible_output_is_refused_early() -> None:
    protocol = deflate_server(max_size=1000)
    header = client_frame(2, b"", rsv=4, mask=MASK, length=100_000)
    protocol.receive_data(header)
    assert protocol.error is not None and protocol.error.code == 1009


def test_close_after_compressed_message_is_echoed() -> None:
    protocol = deflate_server()
    events = protocol.receive_data(
        client_frame(1, deflate(b"bye"), rsv=4, mask=MASK)
        + client_frame(8, struct.pack("!H", 1000), mask=MASK)
    )
    assert events == ["bye"] and protocol.pending
    assert protocol.receive_data(b"") == [Close(1000, "")]


# -- sending fragmented messages -------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_send_fragments_rsv1_on_the_first_frame_only(compressed: bool) -> None:
    protocol = deflate_server(options=DeflateOptions(threshold=0))
    parts = [b"first part, " * 20, b"second part, " * 20, b"last part" * 20]
    for index, part in enumerate(parts):
        protocol.send_fragment(part, binary=False, fin=index == len(parts) - 1, compress=compressed)
        if index == 0:
            protocol.send_ping(b"between")  # control frames may interleave
            with pytest.raises(InvalidState):
                protocol.send_text(b"a whole message")
            with pytest.raises(InvalidState):
                protocol.send_shared(SharedMessage("a shared message"))
    frames = server_frames(b"".join(protocol.data_to_send()))
    expected_first = 0x41 if compressed else 0x01
    assert [b0 for b0, _ in frames] == [expected_first, 0x89, 0x00, 0x80]
    payloads = [payload for b0, payload in frames if b0 != 0x89]
    if compressed:
        decompressor = zlib.decompressobj(-15)
        data = b"".join(decompressor.decompress(p) for p in payloads[:-1])
        data += inflate(payloads[-1], decompressor)
    else:
        data = b"".join(payloads)
    assert data == b"".join(parts)
    assert not protocol.sending_fragments


def test_send_fragments_are_read_back_by_a_peer_protocol() -> None:
    options = DeflateOptions(threshold=0)
    negotiated = negotiate_server(offer(PMD), options)
    assert negotiated is not None
    server = Protocol(Side.SERVER, deflate=negotiated[1])
    client = Protocol(Side.CLIENT, deflate=negotiate_client(offer(negotiated[0]), options))
    for round_ in range(2):  # the second message exercises the shared context
        server.send_fragment(b"hello ", binary=False, fin=False)
        server.send_fragment("κόσμε ".encode(), binary=False, fin=False)
        server.send_fragment(b"world", binary=False, fin=True)
        assert client.receive_data(b"".join(server.data_to_send())) == ["hello κόσμε world"]
        client.send_fragment(b"\x00" * 1000, binary=True, fin=False)
        client.send_fragment(b"\x01" * 1000, binary=True, fin=True)
        assert server.receive_data(b"".join(client.data_to_send())) == [
            b"\x00" * 1000 + b"\x01" * 1000
        ], round_
