"""The permessage-deflate extension (RFC 7692), sans I/O: negotiation and the codec.

Negotiation
-----------
Server side, :func:`negotiate_server` reads every ``Sec-WebSocket-Extensions`` offer,
accepts the first ``permessage-deflate`` offer it can honour and returns the response
value and a :class:`Deflate` codec. A malformed header, or an offer with an unknown,
duplicated or out-of-range parameter, is refused with 400 (:class:`InvalidRequest`).
An offer that is valid but can't be honoured (``server_max_window_bits=8``, which zlib
can't compress with) is declined: the next offer is tried, then no compression.

Client side, :func:`client_offer` is the header value to send and
:func:`negotiate_client` checks the server's answer: anything but a well-formed
``permessage-deflate`` with parameters we may accept raises :class:`InvalidResponse`,
and the client fails the connection.

The codec
---------
:class:`Deflate` compresses outgoing messages (``deflate`` + ``Z_SYNC_FLUSH``, the
trailing ``00 00 ff ff`` removed, RFC 7692 §7.2.1) and inflates incoming ones with a
bounded output: :meth:`Deflate.decompress` never produces more than the caller's limit
plus one byte, so a decompression bomb is caught after at most ``max_size`` bytes of
output. zlib state is allocated on first use, so idle connections cost nothing extra,
and dropped after each message when context takeover is off.
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable, Optional, Union

from ..exceptions import InvalidRequest, InvalidResponse, PayloadTooBig, ProtocolError
from .headers import Headers

__all__ = [
    "EXTENSION_NAME",
    "DeflateOptions",
    "Deflate",
    "parse_extensions",
    "negotiate_server",
    "client_offer",
    "negotiate_client",
    "deflate_options",
]

EXTENSION_NAME = "permessage-deflate"

#: What every compressed message ends with before the sender strips it (RFC 7692 §7.2.1).
_TAIL = b"\x00\x00\xff\xff"

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OWS = re.compile(r"[ \t]*")
_ESCAPE = re.compile(r"\\(.)")
_BITS = re.compile(r"[1-9][0-9]?\Z")

Params = list[tuple[str, Optional[str]]]


def _skip(value: str, pos: int) -> int:
    match = _OWS.match(value, pos)
    assert match is not None  # matches the empty string
    return match.end()


def _token(value: str, pos: int) -> tuple[str, int]:
    match = _TOKEN.match(value, pos)
    if match is None:
        raise ValueError(f"expected a token at {pos} in {value!r}")
    return match.group(), _skip(value, match.end())


def _param_value(value: str, pos: int) -> tuple[str, int]:
    quoted = _QUOTED.match(value, pos)
    if quoted is not None:
        return _ESCAPE.sub(r"\1", quoted.group(1)), _skip(value, quoted.end())
    return _token(value, pos)


def parse_extensions(values: Iterable[str]) -> list[tuple[str, Params]]:
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 §9.1) into
    ``(name, [(param, value or None), ...])``, names lower-cased, quoted values
    unquoted. Raises :class:`ValueError` on a syntax error."""
    result: list[tuple[str, Params]] = []
    for value in values:
        end = len(value)
        pos = _skip(value, 0)
        while pos < end:
            if value[pos] == ",":  # empty list elements are allowed (RFC 9110 §5.6.1)
                pos = _skip(value, pos + 1)
                continue
            name, pos = _token(value, pos)
            params: Params = []
            while pos < end and value[pos] == ";":
                param, pos = _token(value, _skip(value, pos + 1))
                param_value: Optional[str] = None
                if pos < end and value[pos] == "=":
                    param_value, pos = _param_value(value, _skip(value, pos + 1))
                params.append((param.lower(), param_value))
            result.append((name.lower(), params))
            if pos < end:
                if value[pos] != ",":
                    raise ValueError(f"expected ',' at {pos} in {value!r}")
                pos = _skip(value, pos + 1)
    return result


#: Every distinct :attr:`Deflate.settings` once (a handful in practice, at most the few
#: hundred valid combinations): codecs with equal settings hold the same tuple,
#: so a broadcast finds their shared frame by identity.
_SETTINGS: dict[tuple[int, int, int], tuple[int, int, int]] = {}


class DeflateOptions:
    """The local settings for permessage-deflate, as passed to the server and client.

    ``window_bits`` (9-15) is the LZ77 window this side compresses with, and, on the
    server, the window it asks clients to compress with when they let it choose:
    memory per compressing connection is about ``2**(window_bits+2) +
    2**(mem_level+9)`` bytes for deflate and ``2**window_bits`` plus 7 KiB for inflate.
    ``mem_level`` (1-9) sizes deflate's hash table. Messages shorter than ``threshold``
    bytes are sent uncompressed. ``level`` is zlib's compression level (0-9, -1 for
    zlib's default of 6).
    """

    __slots__ = ("level", "mem_level", "threshold", "window_bits")

    def __init__(
        self, window_bits: int = 12, mem_level: int = 5, threshold: int = 128, level: int = -1
    ) -> None:
        if not 9 <= window_bits <= 15:
            raise ValueError("compression window bits must be between 9 and 15")
        if not 1 <= mem_level <= 9:
            raise ValueError("compression memory level must be between 1 and 9")
        if threshold < 0:
            raise ValueError("compression threshold must be 0 or more")
        if not -1 <= level <= 9:
            raise ValueError("compression level must be between -1 and 9")
        self.window_bits = window_bits
        self.mem_level = mem_level
        self.threshold = threshold
        self.level = level

    def __repr__(self) -> str:
        return (
            f"DeflateOptions(window_bits={self.window_bits}, mem_level={self.mem_level}, "
            f"threshold={self.threshold}, level={self.level})"
        )


class Deflate:
    """One connection's negotiated permessage-deflate codec.

    ``local_window_bits`` is the window this side compresses with (below 9 it does
    not compress at all: zlib can't honour a window of 8), ``remote_window_bits`` the
    one the peer compresses with. ``*_no_context_takeover`` reset the compressor or
    decompressor after each message. ``agreed`` is the negotiated extension as it
    appears in the handshake response.
    """

    __slots__ = (
        "_compressor",
        "_decompressor",
        "agreed",
        "can_compress",
        "local_no_context_takeover",
        "local_window_bits",
        "options",
        "remote_no_context_takeover",
        "remote_window_bits",
        "settings",
    )

    def __init__(
        self,
        options: DeflateOptions,
        *,
        local_window_bits: int,
        remote_window_bits: int,
        local_no_context_takeover: bool = False,
        remote_no_context_takeover: bool = False,
        agreed: str = EXTENSION_NAME,
    ) -> None:
        self.options = options
        self.agreed = agreed
        self.local_window_bits = local_window_bits
        # zlib compresses "8" with a window of 9 (see zlib's deflateInit2 notes), so
        # inflate with at least 9: a larger window always decodes a smaller one's data.
        self.remote_window_bits = max(9, remote_window_bits)
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.can_compress = local_window_bits >= 9
        #: What the compressed output depends on: window bits, memory level, level.
        #: Connections with equal settings can share a :meth:`compress_shared` payload.
        settings = (local_window_bits, options.mem_level, options.level)
        self.settings = _SETTINGS.setdefault(settings, settings)
        self._compressor: Optional[zlib._Compress] = None
        self._decompressor: Optional[zlib._Decompress] = None

    def __repr__(self) -> str:
        return f"Deflate({self.agreed!r})"

    def wants(self, size: int, compress: Optional[bool]) -> bool:
        """Whether a message of ``size`` bytes goes compressed: ``compress`` True or
        False decides, ``None`` compares with the threshold."""
        if not self.can_compress or compress is False:
            return False
        return compress is True or size >= self.options.threshold

    def _new_compressor(self) -> zlib._Compress:
        options = self.options
        return zlib.compressobj(
            options.level, zlib.DEFLATED, -self.local_window_bits, options.mem_level
        )

    def compress(self, data: bytes) -> bytes:
        """The compressed payload of one whole message (RFC 7692 §7.2.1)."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._new_compressor()
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._compressor = None if self.local_no_context_takeover else compressor
        return out[:-4]  # Z_SYNC_FLUSH always ends with the empty stored block 00 00 ff ff

    def compress_fragment(self, data: bytes, fin: bool) -> bytes:
        """One fragment of a message compressed as it comes: flushed so the peer can
        inflate it at once, the final empty block stripped from the last one only."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = self._new_compressor()
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if not fin:
            return out
        if self.local_no_context_takeover:
            self._compressor = None
        return out[:-4]

    def compress_shared(self, data: bytes) -> bytes:
        """``data`` compressed from a fresh deflate stream, without this connection's
        context: any peer of a codec with the same :attr:`settings` can inflate it,
        whatever its window holds (see :meth:`forget_context`)."""
        compressor = self._new_compressor()
        return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def forget_context(self) -> None:
        """Drop the compression context: the next message starts a fresh stream.

        Always allowed (a sender never has to use the context); needed after a frame
        compressed elsewhere (a broadcast) went out on this connection, since the peer's
        window then holds bytes this side's compressor never saw."""
        self._compressor = None

    def decompress(self, payload: bytes, fin: bool, limit: Optional[int]) -> bytes:
        """Inflate one frame of a compressed message; ``fin`` marks its last frame.

        Produces at most ``limit + 1`` bytes and raises :class:`PayloadTooBig` (1009)
        when the output goes past ``limit``; raises :class:`ProtocolError` with 1007
        for data that doesn't inflate.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = zlib.decompressobj(-self.remote_window_bits)
        data = payload + _TAIL if fin else payload
        try:
            if limit is None:
                out = decompressor.decompress(data)
            else:
                out = decompressor.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}", 1007) from None
        if limit is not None and len(out) > limit:
            raise PayloadTooBig(f"message over max_size once decompressed (> {limit} bytes)")
        if decompressor.eof:
            # The peer ended its deflate stream (a block with BFINAL set): only our own
            # tail may follow, and the next message starts a new stream.
            if len(decompressor.unused_data) > (4 if fin else 0):
                raise ProtocolError("data after the end of the compressed stream", 1007)
            if fin:
                decompressor = None
        self._decompressor = None if fin and self.remote_no_context_takeover else decompressor
        return out


def _window_bits(name: str, value: Optional[str], allow_none: bool) -> Union[int, bool]:
    """A ``*_max_window_bits`` value: 8-15, or True for "no value" where allowed."""
    if value is None:
        if allow_none:
            return True
        raise ValueError(f"{name} needs a value")
    if _BITS.match(value) is None or not 8 <= int(value) <= 15:
        raise ValueError(f"invalid {name} value {value!r}")
    return int(value)


def _check_params(params: Params, *, request: bool) -> dict[str, Union[int, bool]]:
    """Validate one permessage-deflate element's parameters (RFC 7692 §7.1)."""
    seen: dict[str, Union[int, bool]] = {}
    for name, value in params:
        if name in seen:
            raise ValueError(f"duplicate parameter {name}")
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise ValueError(f"{name} takes no value")
            seen[name] = True
        elif name == "server_max_window_bits":
            seen[name] = _window_bits(name, value, allow_none=False)
        elif name == "client_max_window_bits":
            seen[name] = _window_bits(name, value, allow_none=request)
        else:
            raise ValueError(f"unknown parameter {name}")
    return seen


def negotiate_server(headers: Headers, options: DeflateOptions) -> Optional[tuple[str, Deflate]]:
    """Pick the first permessage-deflate offer in ``headers`` this server can honour.

    Returns the ``Sec-WebSocket-Extensions`` response value and the codec, or ``None``
    when nothing was offered or no offer can be honoured. Raises
    :class:`InvalidRequest` (400) for a malformed header or an invalid offer.
    """
    values = headers.get_all("Sec-WebSocket-Extensions")
    if not values:
        return None
    try:
        offers = parse_extensions(values)
        checked = [
            _check_params(params, request=True) for name, params in offers if name == EXTENSION_NAME
        ]
    except ValueError as exc:
        raise InvalidRequest(400, f"invalid Sec-WebSocket-Extensions: {exc}") from None
    for offer in checked:
        response = [EXTENSION_NAME]
        server_no_context = bool(offer.get("server_no_context_takeover"))
        client_no_context = bool(offer.get("client_no_context_takeover"))
        if server_no_context:
            response.append("server_no_context_takeover")
        if client_no_context:
            response.append("client_no_context_takeover")
        local_bits = options.window_bits
        requested = offer.get("server_max_window_bits")
        if requested is not None:
            if requested < 9:
                continue  # zlib can't compress with a window of 8: decline this offer
            local_bits = min(local_bits, requested)
            response.append(f"server_max_window_bits={local_bits}")
        remote_bits = 15
        client_bits = offer.get("client_max_window_bits")
        if client_bits is not None:
            # The client lets us bound its window (True: any value; an int: at most it).
            remote_bits = (
                options.window_bits
                if client_bits is True
                else min(int(client_bits), options.window_bits)
            )
            response.append(f"client_max_window_bits={remote_bits}")
        agreed = "; ".join(response)
        return agreed, Deflate(
            options,
            local_window_bits=local_bits,
            remote_window_bits=remote_bits,
            local_no_context_takeover=server_no_context,
            remote_no_context_takeover=client_no_context,
            agreed=agreed,
        )
    return None


def client_offer(options: DeflateOptions) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends: permessage-deflate,
    letting the server bound the client's window (``client_max_window_bits``)."""
    del options  # the offer is the same whatever the local settings
    return f"{EXTENSION_NAME}; client_max_window_bits"


def negotiate_client(headers: Headers, options: DeflateOptions) -> Optional[Deflate]:
    """Check the server's ``Sec-WebSocket-Extensions`` answer to :func:`client_offer`.

    Returns the codec, or ``None`` when the server declined compression. Raises
    :class:`InvalidResponse` for a malformed header, an extension we didn't offer, or
    parameters a server may not answer with.
    """
    values = headers.get_all("Sec-WebSocket-Extensions")
    if not values:
        return None
    try:
        agreed = parse_extensions(values)
        if len(agreed) != 1 or agreed[0][0] != EXTENSION_NAME:
            raise ValueError(f"extensions not offered: {', '.join(values)}")
        params = _check_params(agreed[0][1], request=False)
    except ValueError as exc:
        raise InvalidResponse(f"invalid Sec-WebSocket-Extensions: {exc}", 101, headers) from None
    client_bits = int(params.get("client_max_window_bits", 15))
    return Deflate(
        options,
        # Below 9 zlib can't compress: the codec then sends every message uncompressed.
        local_window_bits=min(options.window_bits, client_bits) if client_bits >= 9 else 8,
        remote_window_bits=int(params.get("server_max_window_bits", 15)),
        local_no_context_takeover=bool(params.get("client_no_context_takeover")),
        remote_no_context_takeover=bool(params.get("server_no_context_takeover")),
        agreed=", ".join(values),
    )


def deflate_options(
    compression: Optional[str],
    window_bits: int = 12,
    mem_level: int = 5,
    threshold: int = 128,
    level: int = -1,
) -> Optional[DeflateOptions]:
    """The :class:`DeflateOptions` for the ``compression*`` options of the server, the
    client and the CLI: ``compression`` is ``"deflate"`` or ``None`` (off)."""
    if compression is None:
        return None
    if compression != "deflate":
        raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
    return DeflateOptions(window_bits, mem_level, threshold, level)
