"""The client side of the opening handshake (RFC 6455 §4.1), redirects included, sans I/O.

A :class:`ClientHandshake` holds one attempt: the request to send
(:meth:`~ClientHandshake.request`) and the check of the server's answer
(:meth:`~ClientHandshake.receive_response`), which gives the open connection's
:class:`~geventws.core.protocol.Protocol`, a :class:`Redirect` to follow, or raises
:class:`~geventws.InvalidResponse`.

Redirects and credentials
-------------------------
:meth:`ClientHandshake.redirect` makes the next attempt. When the redirect leads to
another origin (scheme, host or port; ``ws`` → ``wss`` on the default ports of the same
host is not a change of origin, as requests and browsers treat ``http`` → ``https``),
``Authorization``, ``Cookie``, ``Proxy-Authorization`` and every header the caller
marked sensitive are dropped, as websockets, browsers and requests do, and the TLS
server name is the new host's (a ``server_hostname`` given by the caller only ever
applies to the host it was given for). A redirect from ``wss://`` to ``ws://`` is
refused (:class:`~geventws.InvalidURI`).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence, Union
from urllib.parse import urljoin, urlsplit, urlunsplit

from ..exceptions import InvalidResponse, InvalidURI
from .assembler import DEFAULT_MAX_FRAGMENTS
from .deflate import Deflate, DeflateOptions, client_offer, negotiate_client
from .handshake import check_response, client_request, generate_key
from .headers import Headers, HeadersLike
from .http11 import ResponseHead
from .protocol import Protocol, Side
from .uri import WebSocketURI, parse_uri

__all__ = [
    "REDIRECT_STATUSES",
    "SENSITIVE_HEADERS",
    "ClientHandshake",
    "Opened",
    "Redirect",
]

#: The statuses followed as redirects (with a ``Location``).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Headers never sent to another origin after a redirect.
SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class Opened(NamedTuple):
    """A valid 101: the open connection's ``protocol``, the ``subprotocol`` the server
    chose, the negotiated ``extensions`` value and the response ``headers``."""

    protocol: Protocol
    subprotocol: Optional[str]
    extensions: Optional[str]
    headers: Headers


class Redirect(NamedTuple):
    """A redirect to ``location`` (as the server sent it)."""

    location: str


class ClientHandshake:
    """One opening-handshake attempt to ``uri``.

    ``headers`` are added to the request (user info in the URI becomes a Basic
    ``Authorization`` unless they have one), ``origin`` sets ``Origin``,
    ``subprotocols`` are offered in order, ``deflate`` offers permessage-deflate with
    those local settings, ``user_agent`` is sent unless ``headers`` have one.
    ``sensitive_headers`` are names (any case) dropped on a redirect to another origin,
    besides :data:`SENSITIVE_HEADERS`. ``server_hostname`` overrides the TLS server name
    for this URI's host only.
    """

    __slots__ = (
        "_server_hostname",
        "deflate",
        "headers",
        "key",
        "origin",
        "sensitive_headers",
        "subprotocols",
        "uri",
        "user_agent",
    )

    def __init__(
        self,
        uri: Union[str, WebSocketURI],
        *,
        headers: Optional[HeadersLike] = None,
        origin: Optional[str] = None,
        subprotocols: Optional[Sequence[str]] = None,
        deflate: Optional[DeflateOptions] = None,
        user_agent: Optional[str] = None,
        sensitive_headers: Iterable[str] = (),
        server_hostname: Optional[str] = None,
    ) -> None:
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri
        self.headers = Headers(headers) if headers is not None else Headers()
        self.origin = origin
        self.subprotocols = tuple(subprotocols or ())
        self.deflate = deflate
        self.user_agent = user_agent
        self.sensitive_headers = SENSITIVE_HEADERS | {name.lower() for name in sensitive_headers}
        self._server_hostname = server_hostname
        #: This attempt's ``Sec-WebSocket-Key``.
        self.key = generate_key()

    @property
    def server_hostname(self) -> str:
        """The TLS server name (SNI, certificate check) for this attempt."""
        return self._server_hostname or self.uri.host

    def request(self) -> bytes:
        """The upgrade request's bytes."""
        fields = Headers(self.headers)
        if self.user_agent is not None and "User-Agent" not in fields:
            fields.add("User-Agent", self.user_agent)
        if self.uri.authorization is not None and "Authorization" not in fields:
            fields.add("Authorization", self.uri.authorization)
        return client_request(
            self.uri.host_header,
            self.uri.resource_name,
            self.key,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extensions=None if self.deflate is None else client_offer(self.deflate),
            headers=fields,
        )

    def receive_response(
        self,
        head: ResponseHead,
        *,
        max_size: Optional[int] = 2**20,
        max_fragments: Optional[int] = DEFAULT_MAX_FRAGMENTS,
    ) -> Union[Opened, Redirect]:
        """Check the server's answer: :class:`Opened` for a valid 101 (the protocol
        gets ``max_size`` and ``max_fragments``), :class:`Redirect` for a redirect with
        a ``Location``. Raises :class:`InvalidResponse` otherwise, with ``status`` and
        ``headers`` (the caller adds the ``body`` of an error answer)."""
        if head.status in REDIRECT_STATUSES and "Location" in head.headers:
            return Redirect(head.headers["Location"])
        if head.status != 101:
            raise InvalidResponse(
                f"server rejected WebSocket connection: HTTP {head.status}",
                head.status,
                head.headers,
            )
        subprotocol = check_response(head, self.key, self.subprotocols)
        codec: Optional[Deflate] = None
        if self.deflate is not None:
            codec = negotiate_client(head.headers, self.deflate)
        elif head.headers.get_all("Sec-WebSocket-Extensions"):
            raise InvalidResponse("server chose an extension the client did not offer", 101)
        protocol = Protocol(
            Side.CLIENT, max_size=max_size, max_fragments=max_fragments, deflate=codec
        )
        return Opened(protocol, subprotocol, None if codec is None else codec.agreed, head.headers)

    def redirect(self, location: str) -> ClientHandshake:
        """The attempt that follows a redirect to ``location`` (relative or absolute;
        ``http``/``https`` are read as ``ws``/``wss``). Across origins, sensitive
        headers are dropped and the TLS server name follows the new host (see the
        module doc). Raises :class:`InvalidURI` for a redirect from ``wss://`` to
        ``ws://`` or a target that is not a WebSocket URI."""
        current = self.uri
        scheme = "wss" if current.secure else "ws"
        host = f"[{current.host}]" if ":" in current.host else current.host
        base = f"{scheme}://{host}:{current.port}{current.resource_name}"
        try:
            absolute = urlsplit(urljoin(base, location))
        except ValueError as exc:  # an authority urllib refuses, such as "http://["
            raise InvalidURI(f"invalid redirect location {location!r}: {exc}") from None
        mapped = {"http": "ws", "https": "wss"}.get(absolute.scheme, absolute.scheme)
        if current.secure and mapped == "ws":
            raise InvalidURI(f"refusing a redirect from wss:// to ws://: {location}")
        target = parse_uri(urlunsplit(absolute._replace(scheme=mapped)))
        same = _same_origin(current, target)
        headers = Headers(self.headers)
        if not same:
            headers = Headers(
                [(k, v) for k, v in headers.items() if k.lower() not in self.sensitive_headers]
            )
        elif current.authorization is not None and target.user_info is None:
            if "Authorization" not in headers:  # the user info's credentials stay with it
                headers.add("Authorization", current.authorization)
        return ClientHandshake(
            target,
            headers=headers,
            origin=self.origin,
            subprotocols=self.subprotocols,
            deflate=self.deflate,
            user_agent=self.user_agent,
            sensitive_headers=self.sensitive_headers,
            server_hostname=self._server_hostname if same else None,
        )


def _same_origin(old: WebSocketURI, new: WebSocketURI) -> bool:
    """Whether credentials may follow a redirect from ``old`` to ``new``: same host,
    and same scheme and port, or ``ws`` on 80 to ``wss`` on 443 (an upgrade)."""
    if old.host.lower() != new.host.lower():
        return False
    if (old.secure, old.port) == (new.secure, new.port):
        return True
    return not old.secure and new.secure and old.port == 80 and new.port == 443
