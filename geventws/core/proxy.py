"""Trusted proxy headers: the client's address and scheme behind reverse proxies.

Behind nginx or HAProxy every connection comes from the proxy; the proxy says who the
client is in ``X-Forwarded-For`` / ``X-Forwarded-Proto`` or in RFC 7239's
``Forwarded``. Anyone can send those headers, so they are believed only when the peer
(the address the TCP connection comes from) is a trusted proxy, and only the header
family the proxies are configured to set is read (``proxy_headers``): a client that adds
``Forwarded: for=...`` behind a proxy that only appends to ``X-Forwarded-For`` must not
choose its own address.

The rules, as in uvicorn's ``--proxy-headers`` and gunicorn's ``forwarded_allow_ips``:

* The trusted set (``forwarded_allow_ips``) holds IP addresses and networks, IPv4 or
  IPv6 (``"127.0.0.1, 10.0.0.0/8, ::1"``); ``"*"`` trusts every peer. The default is
  ``127.0.0.1`` only. A peer without an IP address (a Unix socket) is trusted, as in
  gunicorn: the socket file's permissions decide who connects. IPv4-mapped IPv6
  addresses (``::ffff:127.0.0.1``) match their IPv4 form.
* Each proxy appends the address it received the connection from, so the list is read
  from the right: past trusted proxies, the first untrusted address is the client (the
  entries to its left are whatever the client sent, and are not even parsed). When
  every entry is trusted, the leftmost is the client.
* The scheme: ``Forwarded``'s ``proto`` of the element the client was found in;
  ``X-Forwarded-Proto`` when it holds one value, or the value at the client's position
  when it holds as many values as ``X-Forwarded-For``. ``http``/``ws`` give ``ws``,
  ``https``/``wss`` give ``wss``.
* Malformed values are ignored, never an error: a list whose walk meets an entry that
  is not an IP address (``unknown``, an obfuscated ``_name``, garbage) leaves the
  address as the peer's; an unknown scheme leaves the scheme as the socket's.
* A forwarded address has the port the proxy gave (``Forwarded: for="[::1]:4711"``,
  ``X-Forwarded-For: 192.0.2.1:4711``), else port 0.

:func:`resolve` does it for a request's :class:`~geventws.core.headers.Headers`;
:func:`apply_to_environ` and :class:`ProxyHeadersMiddleware` for a WSGI environ.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Optional, Union

from .headers import Headers

__all__ = [
    "DEFAULT_FORWARDED_ALLOW_IPS",
    "PROXY_HEADERS",
    "TrustedProxies",
    "resolve",
    "check_proxy_headers",
    "apply_to_environ",
    "ProxyHeadersMiddleware",
]

#: The default trusted set: a proxy on the same machine.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1"

#: The header families ``proxy_headers`` can name.
PROXY_HEADERS = ("x-forwarded", "forwarded")

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = tuple[Any, ...]


class TrustedProxies:
    """The peers whose forwarding headers are believed.

    ``spec`` is a comma-separated string or an iterable of strings, each an IP address
    or a network in CIDR form (``10.0.0.0/8``, ``fd00::/8``), or ``*`` for every peer.
    Raises :class:`ValueError` naming an entry that is neither.
    """

    __slots__ = ("_known", "everyone", "networks")

    def __init__(self, spec: Union[str, Iterable[str]] = DEFAULT_FORWARDED_ALLOW_IPS) -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        entries = [item.strip() for item in items if item.strip()]
        #: Whether ``*`` was given: every peer is trusted.
        self.everyone = "*" in entries
        networks: list[_IPNetwork] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address, a network or '*'"
                ) from None
        #: The trusted networks (a single address is a /32 or /128 network).
        self.networks = tuple(networks)
        self._known: dict[str, bool] = {}  # recent answers: parsing an address costs

    def __contains__(self, host: object) -> bool:
        """Whether ``host`` (an IP address as a string) is trusted; anything that is not
        an IP address is not, unless every peer is."""
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        known = self._known.get(host)
        if known is None:
            ip = _ip(host)
            known = ip is not None and any(ip in network for network in self.networks)
            if len(self._known) >= 1024:
                self._known.clear()
            self._known[host] = known
        return known

    def trusts_peer(self, peer: Optional[Address]) -> bool:
        """Whether the connection's peer is trusted. ``peer`` is a socket address
        (``(host, port, ...)``); a peer without an IP address (a Unix socket, whose
        address is empty or a path) is trusted."""
        if self.everyone:
            return True
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not isinstance(host, str) or not host or host.startswith("/"):
            return True
        return host in self

    def __repr__(self) -> str:
        names = ["*"] if self.everyone else [str(network) for network in self.networks]
        return f"TrustedProxies({', '.join(names)!r})"


def resolve(
    peer: Optional[Address],
    headers: Headers,
    trusted: TrustedProxies,
    *,
    scheme: str = "ws",
    proxy_headers: Optional[str] = "x-forwarded",
) -> tuple[Optional[Address], str]:
    """The client's address and scheme (``"ws"`` or ``"wss"``) for a request that came
    from ``peer`` with ``headers``; ``scheme`` is the socket's own.

    ``proxy_headers`` names the header family to read: ``"x-forwarded"``
    (``X-Forwarded-For`` and ``X-Forwarded-Proto``), ``"forwarded"`` (RFC 7239) or
    ``None`` (none: ``peer`` and ``scheme`` come back unchanged). When the peer is not
    trusted they come back unchanged too. Never raises for any header value.
    """
    if proxy_headers is None or not trusted.trusts_peer(peer):
        return peer, scheme
    if proxy_headers == "forwarded":
        return _resolve_forwarded(peer, headers, trusted, scheme)
    return _resolve_x_forwarded(peer, headers, trusted, scheme)


def check_proxy_headers(value: Optional[str]) -> Optional[str]:
    """``value`` as a ``proxy_headers`` setting (case-insensitive; ``"none"`` is
    ``None``); raises :class:`ValueError` for anything else."""
    if value is None or value.lower() == "none":
        return None
    if value.lower() not in PROXY_HEADERS:
        raise ValueError(f"proxy_headers must be 'x-forwarded', 'forwarded' or None, not {value!r}")
    return value.lower()


# -- X-Forwarded-For / X-Forwarded-Proto ----------------------------------------------


def _list(headers: Headers, name: str) -> list[str]:
    """Every item of a comma-separated header, across repeated fields, stripped, empty
    items dropped (RFC 9110 §5.6.1)."""
    return [
        item.strip() for value in headers.get_all(name) for item in value.split(",") if item.strip()
    ]


def _resolve_x_forwarded(
    peer: Optional[Address], headers: Headers, trusted: TrustedProxies, scheme: str
) -> tuple[Optional[Address], str]:
    hops = _list(headers, "X-Forwarded-For")
    protos = _list(headers, "X-Forwarded-Proto")
    address = peer
    position: Optional[int] = None
    for index in range(len(hops) - 1, -1, -1):
        node = _node(hops[index])
        if node is None:  # malformed where it matters: ignore the header
            address, position = peer, None
            break
        address, position = node, index
        if node[0] not in trusted:
            break
    if len(protos) == 1:
        scheme = _scheme(protos[0], scheme)
    elif protos and position is not None and len(protos) == len(hops):
        scheme = _scheme(protos[position], scheme)
    return address, scheme


def _node(text: str) -> Optional[Address]:
    """``(host, port)`` of ``192.0.2.1``, ``192.0.2.1:80``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:80`` (port 0 when absent); ``None`` when it
    is none of those (``unknown``, an obfuscated name, garbage)."""
    host, port = text, "0"
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
        if ":" not in host:
            return None
    elif text.count(":") == 1:
        host, port = text.split(":")
    ip = _ip(host)
    if (
        ip is None
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or int(port) > 65535
    ):
        return None
    return (str(ip), int(port))


def _ip(text: str) -> Optional[_IPAddress]:
    """The IP address ``text`` names (IPv4-mapped IPv6 as IPv4, no zone), or ``None``."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return None
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
    return ip


def _scheme(value: str, default: str) -> str:
    lower = value.strip().lower()
    if lower in ("https", "wss"):
        return "wss"
    if lower in ("http", "ws"):
        return "ws"
    return default


# -- Forwarded (RFC 7239) -------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR = re.compile(rf'({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*")')


def _forwarded_elements(headers: Headers) -> list[Optional[dict[str, str]]]:
    """The elements of every ``Forwarded`` field in order, each a dict of its
    parameters (names lower-cased, quotes removed), or ``None`` where malformed
    (a pair that is not ``token=token`` or ``token="quoted"``, a parameter twice)."""
    elements: list[Optional[dict[str, str]]] = []
    for value in headers.get_all("Forwarded"):
        for text in _split(value, ","):
            if not text.strip():
                continue  # an empty list element: "a, , b"
            element: Optional[dict[str, str]] = {}
            for pair in _split(text, ";"):
                match = _PAIR.fullmatch(pair.strip())
                if match is None or element is None or match.group(1).lower() in element:
                    element = None
                    break
                raw = match.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                element[match.group(1).lower()] = raw
            elements.append(element)
    return elements


def _split(value: str, separator: str) -> list[str]:
    """``value`` split at ``separator`` where it is outside a quoted string."""
    parts: list[str] = []
    start, index, quoted = 0, 0, False
    while index < len(value):
        char = value[index]
        if quoted and char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(value[start:index])
            start = index + 1
        index += 1
    parts.append(value[start:])
    return parts


def _resolve_forwarded(
    peer: Optional[Address], headers: Headers, trusted: TrustedProxies, scheme: str
) -> tuple[Optional[Address], str]:
    elements = _forwarded_elements(headers)
    address, proto = peer, None
    for element in reversed(elements):
        node = _node(element.get("for", "")) if element is not None else None
        if element is None or node is None:
            return peer, scheme  # malformed where it matters: ignore the header
        address, proto = node, element.get("proto")
        if node[0] not in trusted:
            break
    return address, (scheme if proto is None else _scheme(proto, scheme))


# -- WSGI -----------------------------------------------------------------------------

_ENVIRON_HEADERS = {
    "x-forwarded": (
        ("X-Forwarded-For", "HTTP_X_FORWARDED_FOR"),
        ("X-Forwarded-Proto", "HTTP_X_FORWARDED_PROTO"),
    ),
    "forwarded": (("Forwarded", "HTTP_FORWARDED"),),
}


def apply_to_environ(
    environ: dict[str, Any],
    trusted: TrustedProxies,
    proxy_headers: Optional[str] = "x-forwarded",
) -> None:
    """Rewrite a WSGI ``environ``'s ``REMOTE_ADDR``, ``REMOTE_PORT`` and
    ``wsgi.url_scheme`` (``http``/``https``) with :func:`resolve`, when its peer (the
    original ``REMOTE_ADDR``) is trusted. Never raises for any header value."""
    if proxy_headers is None:
        return
    host = environ.get("REMOTE_ADDR")
    port = str(environ.get("REMOTE_PORT", ""))
    peer: Optional[Address] = (host, int(port) if port.isdigit() else 0) if host else None
    headers = Headers()
    for name, key in _ENVIRON_HEADERS.get(proxy_headers, ()):
        if environ.get(key):
            headers.add(name, environ[key])
    socket_scheme = "wss" if environ.get("wsgi.url_scheme") == "https" else "ws"
    address, scheme = resolve(
        peer, headers, trusted, scheme=socket_scheme, proxy_headers=proxy_headers
    )
    if address is not peer and address is not None:
        environ["REMOTE_ADDR"] = address[0]
        environ["REMOTE_PORT"] = str(address[1])
    if scheme != socket_scheme:
        environ["wsgi.url_scheme"] = "https" if scheme == "wss" else "http"


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ProxyHeadersMiddleware:
    """A WSGI middleware that applies :func:`apply_to_environ` to every request before
    ``app`` sees it; ``geventws serve --wsgi`` wraps its application in it. Put it
    outermost, so that :class:`~geventws.wsgi.WebSocketMiddleware` inside it sees the
    client's address. Raises :class:`ValueError` for an invalid setting."""

    def __init__(
        self,
        app: WSGIApp,
        forwarded_allow_ips: Union[str, Iterable[str]] = DEFAULT_FORWARDED_ALLOW_IPS,
        proxy_headers: Optional[str] = "x-forwarded",
    ) -> None:
        self.app = app
        self.trusted = TrustedProxies(forwarded_allow_ips)
        self.proxy_headers = check_proxy_headers(proxy_headers)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        apply_to_environ(environ, self.trusted, self.proxy_headers)
        return self.app(environ, start_response)
