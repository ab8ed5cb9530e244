"""Messages framed once for many connections (broadcasts and topics), sans I/O.

A server sends the same unmasked frame to every client, so a message going to many
connections is framed once, and compressed once per distinct permessage-deflate setting
(window bits, memory level, level) from a fresh deflate stream, which any peer that
negotiated those settings can inflate whatever its window holds.
:meth:`Protocol.send_shared <geventws.core.protocol.Protocol.send_shared>` picks the
frame for one connection.
"""

from __future__ import annotations

from typing import Optional, Union

from .deflate import Deflate
from .frames import BytesLike, Opcode, encode_data, frame_header

__all__ = ["SharedMessage"]

_FIN = 0x80
_RSV1 = 0x40


class SharedMessage:
    """One text or binary message for many server connections.

    ``message`` is a ``str`` or bytes (sent as text must be valid UTF-8:
    :class:`ValueError` otherwise); ``compress`` is as in
    :meth:`Protocol.send_text <geventws.core.protocol.Protocol.send_text>`. Frames are
    built lazily and cached: :attr:`frame` uncompressed, :meth:`compressed_frame` per
    codec setting.
    """

    __slots__ = ("_compressed", "_frame", "_last", "binary", "compress", "data")

    def __init__(
        self, message: Union[str, BytesLike], binary: bool = False, compress: Optional[bool] = None
    ) -> None:
        self.data = encode_data(message, binary)
        self.binary = binary
        self.compress = compress
        self._frame: Optional[bytes] = None
        self._compressed: dict[tuple[int, int, int], bytes] = {}
        # The settings last asked for and their frame: equal settings are one tuple
        # (see Deflate.settings), so the next connection usually matches by identity.
        self._last: tuple[Optional[tuple[int, int, int]], bytes] = (None, b"")

    @property
    def frame(self) -> bytes:
        """The whole uncompressed (server, unmasked) frame."""
        frame = self._frame
        if frame is None:
            frame = self._frame = self._build(self.data, 0)
        return frame

    def compressed_frame(self, deflate: Deflate) -> bytes:
        """The whole frame compressed for connections with ``deflate``'s settings."""
        settings = deflate.settings
        last, frame = self._last
        if settings is last:
            return frame
        found = self._compressed.get(settings)
        if found is None:
            payload = deflate.compress_shared(self.data)
            found = self._compressed[settings] = self._build(payload, _RSV1)
        self._last = (settings, found)
        return found

    def _build(self, payload: bytes, rsv: int) -> bytes:
        opcode = Opcode.BINARY if self.binary else Opcode.TEXT
        return frame_header(_FIN | rsv | opcode, len(payload)) + payload
