"""WebSocket URIs (RFC 6455 §3): ``ws://`` and ``wss://``, sans I/O."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote, unquote, urlsplit

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


# A host as it may appear in a Host header: an RFC 3986 reg-name or IPv4 address, or
# an IPv6 address (it goes between brackets) with an optional RFC 6874 zone.
_HOST = re.compile(
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})+)?"
)
# What the resource name keeps as is: visible ASCII but the characters browsers
# percent-encode in a path (the WHATWG URL standard's path percent-encode set).
_KEEP_IN_TARGET = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>`{}')


def parse_uri(uri: str) -> WebSocketURI:
    """Parse ``ws://`` or ``wss://`` URIs, IPv6 literals and default ports included.

    IRIs are made URIs as browsers do: a non-ASCII host name is IDNA-encoded, and the
    path and query are percent-encoded (UTF-8) wherever they hold a character that a
    request line can't carry (spaces, controls, non-ASCII), so ``resource_name`` and
    ``host_header`` are always valid in the request (RFC 9112 §3.2, RFC 9110 §7.2).

    Raises :class:`InvalidURI` for another scheme, a missing or malformed host, a
    fragment (not allowed by RFC 6455 §3), a bad port, or a string that isn't text
    (lone surrogates).
    """
    try:
        uri.encode("utf-8")
        parts = urlsplit(uri)
        port = parts.port
    except (ValueError, UnicodeError) as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} is not a WebSocket URI: the scheme must be ws or wss")
    host = parts.hostname
    if not host:
        raise InvalidURI(f"{uri!r} has no host")
    if parts.fragment:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs may not have")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURI(f"{uri!r} has an invalid host name: {exc}") from None
    if _HOST.fullmatch(host) is None:
        raise InvalidURI(f"{uri!r} has an invalid host {host!r}")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    user_info = None
    if parts.username is not None:
        user_info = (unquote(parts.username), unquote(parts.password or ""))
    return WebSocketURI(
        secure=secure,
        host=host,
        port=port if port is not None else (443 if secure else 80),
        resource_name=quote(resource, safe=_KEEP_IN_TARGET),
        user_info=user_info,
    )
