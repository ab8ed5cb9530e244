"""How a connection ended, derived in one place from the protocol's state: the
:class:`Ending` part of :class:`~geventws.core.protocol.Protocol`, sans I/O."""

from __future__ import annotations

from typing import Optional

from ..exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, ProtocolError
from .events import CLOSED, Close, State
from .frames import OK_CLOSE_CODES, CloseCode

__all__ = ["Ending"]


class Ending:
    """The close code, reason, exception and TCP ending of a connection, from the
    attributes :class:`~geventws.core.protocol.Protocol` keeps (declared here)."""

    __slots__ = ()

    state: State
    error: Optional[ProtocolError]
    close_rcvd: Optional[Close]
    close_sent: Optional[Close]
    eof_rcvd: bool
    _client: bool

    @property
    def close_transport(self) -> bool:
        """True once the TCP connection should be closed: the closing handshake is over,
        the connection failed, or the transport ended."""
        return self.state is CLOSED

    @property
    def shutdown_first(self) -> bool:
        """Whether this side ends TCP first once :attr:`close_transport` is true
        (RFC 6455 §7.1.1): the server does, and so does a client that failed the
        connection itself (it owes the server nothing more). Otherwise the client waits
        for the server to close."""
        return not self._client or self.error is not None

    @property
    def close_code(self) -> Optional[int]:
        """How the connection closed, ``None`` while it is not closed yet.

        The code this side failed the connection with (protocol error, message too
        big, keepalive or send timeout); else the code in the peer's close frame (1005
        when it had none); else 1006: the transport ended without a closing handshake.
        """
        if self.error is not None:
            return self.error.code
        if self.close_rcvd is not None:
            return self.close_rcvd.code
        if self.eof_rcvd:
            return CloseCode.ABNORMAL_CLOSURE
        return None

    @property
    def close_reason(self) -> Optional[str]:
        """The reason matching :attr:`close_code` (``""`` when none was given)."""
        if self.error is not None:
            return str(self.error)
        if self.close_rcvd is not None:
            return self.close_rcvd.reason
        return "" if self.eof_rcvd else None

    def closed_exception(self) -> ConnectionClosed:
        """The exception an operation on this closed (or closing) connection raises:
        :class:`~geventws.ConnectionClosedOK` for 1000, 1001 and 1005,
        :class:`~geventws.ConnectionClosedError` otherwise. While only our close frame
        is out, it reports the code we sent."""
        code = self.close_code
        if code is None:
            sent = self.close_sent
            code, reason = (sent.code, sent.reason) if sent is not None else (1006, "")
        else:
            reason = self.close_reason or ""
        if code in OK_CLOSE_CODES:
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason)
