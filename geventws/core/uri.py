"""WebSocket URIs (RFC 6455 §3): ``ws://`` and ``wss://``, sans I/O."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

from ..exceptions import InvalidURI

__all__ = ["WebSocketURI", "parse_uri"]


@dataclass(frozen=True)
class WebSocketURI:
    """A parsed WebSocket URI.

    ``resource_name`` is the path and query sent in the request line; ``user_info`` the
    decoded ``(user, password)`` of ``ws://user:pass@host/``, if any.
    """

    secure: bool
    host: str
    port: int
    resource_name: str
    user_info: Optional[tuple[str, str]] = None

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: the port only when not the default one."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def authorization(self) -> Optional[str]:
        """A Basic ``Authorization`` header value from the user info, if any."""
        if self.user_info is None:
            return None
        user, password = self.user_info
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return f"Basic {token}"


def parse_uri(uri: str) -> WebSocketURI:
    """Parse ``ws://`` or ``wss://`` URIs, IPv6 literals and default ports included.

    Raises :class:`InvalidURI` for another scheme, a missing host, a fragment (not
    allowed by RFC 6455 §3) or a bad port.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} is not a WebSocket URI: the scheme must be ws or wss")
    if not parts.hostname:
        raise InvalidURI(f"{uri!r} has no host")
    if parts.fragment:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs may not have")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    user_info = None
    if parts.username is not None:
        user_info = (unquote(parts.username), unquote(parts.password or ""))
    return WebSocketURI(
        secure=secure,
        host=parts.hostname,
        port=port if port is not None else (443 if secure else 80),
        resource_name=resource,
        user_info=user_info,
    )
