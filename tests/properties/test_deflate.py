"""permessage-deflate: negotiate with random offers and settings, then carry many
messages both ways through two protocols (whole, fragmented, compressed or not), with
context takeover on and off."""

from __future__ import annotations

from typing import Optional, Union

from hypothesis import given
from hypothesis import strategies as st

from geventws.core.deflate import (
    Deflate,
    DeflateOptions,
    negotiate_client,
    negotiate_server,
    parse_extensions,
)
from geventws.core.headers import Headers
from geventws.core.protocol import Event, Protocol, Side

from ..fuzz.wire import OutputChecker
from .strategies import checks, chunks_of

options = st.builds(
    DeflateOptions,
    window_bits=st.integers(9, 15),
    mem_level=st.integers(1, 9),
    threshold=st.sampled_from([0, 1, 64, 128, 10**9]),
    level=st.integers(-1, 9),
)


@st.composite
def offers(draw: st.DrawFn) -> str:
    """A permessage-deflate offer with any valid subset of its parameters."""
    params = []
    if draw(st.booleans()):
        params.append("server_no_context_takeover")
    if draw(st.booleans()):
        params.append("client_no_context_takeover")
    if draw(st.booleans()):
        params.append(f"server_max_window_bits={draw(st.integers(9, 15))}")
    bits = draw(st.sampled_from([None, True, *range(8, 16)]))
    if bits is True:
        params.append("client_max_window_bits")
    elif bits is not None:
        quoted = draw(st.booleans())
        params.append(
            f'client_max_window_bits="{bits}"' if quoted else f"client_max_window_bits={bits}"
        )
    draw(st.randoms()).shuffle(params)
    return "; ".join(["permessage-deflate", *params])


def negotiate(
    offer: str, server: DeflateOptions, client: DeflateOptions
) -> tuple[Deflate, Deflate]:
    negotiated = negotiate_server(Headers([("Sec-WebSocket-Extensions", offer)]), server)
    assert negotiated is not None, offer
    agreed, server_codec = negotiated
    client_codec = negotiate_client(Headers([("Sec-WebSocket-Extensions", agreed)]), client)
    assert client_codec is not None
    return server_codec, client_codec


message_lists = st.lists(
    st.tuples(
        st.one_of(st.text(max_size=400), st.binary(max_size=400), st.just(b"abc" * 2000)),
        st.sampled_from([None, True, False]),  # compress
        st.booleans(),  # sent in fragments
    ),
    max_size=10,
)


def send(
    protocol: Protocol, message: Union[str, bytes], compress: Optional[bool], pieces: list[bytes]
) -> None:
    binary = isinstance(message, bytes)
    if len(pieces) <= 1:
        raw = message if isinstance(message, bytes) else message.encode()
        (protocol.send_binary if binary else protocol.send_text)(raw, compress)
        return
    for index, piece in enumerate(pieces):
        protocol.send_fragment(
            piece, binary=binary, fin=index == len(pieces) - 1, compress=compress
        )


@checks
@given(
    offer=offers(),
    server_options=options,
    client_options=options,
    sent=message_lists,
    data=st.data(),
)
def test_compressed_messages_arrive_intact_both_ways(
    offer: str,
    server_options: DeflateOptions,
    client_options: DeflateOptions,
    sent: list[tuple[Union[str, bytes], Optional[bool], bool]],
    data: st.DataObject,
) -> None:
    server_codec, client_codec = negotiate(offer, server_options, client_options)
    params = dict(parse_extensions([offer])[0][1])
    assert server_codec.local_no_context_takeover is ("server_no_context_takeover" in params)
    assert client_codec.local_no_context_takeover is ("client_no_context_takeover" in params)
    server = Protocol(Side.SERVER, max_size=None, deflate=server_codec)
    client = Protocol(Side.CLIENT, max_size=None, deflate=client_codec)
    for sender, receiver in ((server, client), (client, server)):
        codec = sender.deflate
        assert codec is not None
        compressed = []
        for message, compress, fragmented in sent:
            raw = message if isinstance(message, bytes) else message.encode()
            pieces = data.draw(chunks_of(raw)) if fragmented else [raw]
            send(sender, message, compress, pieces)
            # Decided on the first frame: compress=True/False, else the threshold.
            wanted = compress is True or (
                compress is None and len(pieces[0]) >= codec.options.threshold
            )
            compressed.append(wanted and codec.local_window_bits >= 9)
        stream = b"".join(sender.data_to_send())
        # An independent reader: valid frames, RSV1 where expected, the negotiated
        # window and context takeover honoured.
        checker = OutputChecker(
            masked=sender.side is Side.CLIENT,
            window_bits=codec.local_window_bits if codec.local_window_bits >= 9 else None,
            fresh_context=codec.local_no_context_takeover,
        )
        checker.feed(stream)
        firsts = [frame for frame in checker.frames if frame.opcode in (1, 2)]
        assert [frame.rsv1 for frame in firsts] == compressed
        assert checker.messages == [message for message, _, _ in sent]
        events: list[Event] = []
        for chunk in data.draw(chunks_of(stream)):
            events += receiver.receive_data(chunk)
        assert events == [message for message, _, _ in sent]
        assert receiver.error is None


@checks
@given(offer=offers(), server_options=options, size=st.integers(1, 5000), data=st.data())
def test_max_size_counts_inflated_bytes(
    offer: str, server_options: DeflateOptions, size: int, data: st.DataObject
) -> None:
    """A message that inflates past ``max_size`` fails with 1009, one that fits arrives."""
    server_codec, client_codec = negotiate(offer, server_options, DeflateOptions())
    limit = data.draw(st.integers(0, 2 * size))
    server = Protocol(Side.SERVER, max_size=limit, deflate=server_codec)
    client = Protocol(Side.CLIENT, deflate=client_codec)
    client.send_binary(b"\x00" * size, compress=True)
    events = server.receive_data(b"".join(client.data_to_send()))
    if size <= limit or (not client_codec.can_compress and size <= limit):
        assert events == [b"\x00" * size]
    else:
        assert events == [] and server.error is not None and server.error.code == 1009
