"""What the handshake hook sees: the client's upgrade request.

A :class:`Request` is built from the parsed request head before the handler runs; the
handler reads it to decide whether to :meth:`~geventws.Connection.accept` or
:meth:`~geventws.Connection.reject` (the equivalent of Workerman's
``onWebSocketConnect``).
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any, Iterable, Iterator, Mapping, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from .headers import Headers, parse_token_list

__all__ = ["Request", "MultiDict"]


class MultiDict(Mapping[str, str]):
    """Query parameters: ``args["k"]`` is the first value, :meth:`getlist` all of them."""

    __slots__ = ("_data",)

    def __init__(self, pairs: Optional[list[tuple[str, str]]] = None) -> None:
        self._data: dict[str, list[str]] = {}
        for key, value in pairs or ():
            self._data.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> str:
        return self._data[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key`` in order; an empty list when absent."""
        return list(self._data.get(key, ()))

    def __repr__(self) -> str:
        return f"MultiDict({self._data!r})"


class Request:
    """A WebSocket upgrade request, as the handler and the handshake hook see it.

    Attributes: ``method``, ``target`` (path and query as sent), ``path`` (decoded),
    ``query_string``, ``args`` (:class:`MultiDict`), ``headers``
    (:class:`~geventws.core.headers.Headers`), ``cookies`` (name → value), ``origin``,
    ``host``, ``subprotocols`` (offered, in the client's order), ``extensions`` (the
    raw ``Sec-WebSocket-Extensions`` values), ``remote_address``, ``scheme`` and, under
    WSGI, ``environ``.

    ``remote_address`` is the client's address and ``scheme`` (``"ws"`` or ``"wss"``)
    the scheme it used: behind a trusted reverse proxy, as its ``X-Forwarded-For`` /
    ``X-Forwarded-Proto`` or ``Forwarded`` headers say (:mod:`geventws.core.proxy`),
    otherwise the socket's peer and whether the server itself speaks TLS.
    """

    # Kept for the connection's whole life: slots keep it small (``__dict__`` still lets
    # applications attach their own attributes); the parsed parts are computed on use.
    __slots__ = (
        "__dict__",
        "_args",
        "environ",
        "headers",
        "method",
        "remote_address",
        "scheme",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        remote_address: Optional[tuple[Any, ...]] = None,
        environ: Optional[dict[str, Any]] = None,
        *,
        scheme: str = "ws",
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.target = target
        self.headers = headers
        self.remote_address = remote_address
        self.environ = environ
        self._args: Optional[MultiDict] = None

    @property
    def path(self) -> str:
        """The path, percent-decoded, without the query string."""
        return unquote(_split_target(self.target)[0])

    @property
    def query_string(self) -> str:
        """The query string as sent (without ``?``)."""
        return _split_target(self.target)[1]

    @property
    def args(self) -> MultiDict:
        """The query parameters (:class:`MultiDict`)."""
        args = self._args
        if args is None:
            query = _split_target(self.target)[1]
            args = self._args = MultiDict(parse_qsl(query, keep_blank_values=True))
        return args

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order."""
        return parse_token_list_keep_case(self.headers.get_all("Sec-WebSocket-Protocol"))

    @property
    def extensions(self) -> list[str]:
        """The raw ``Sec-WebSocket-Extensions`` values."""
        return self.headers.get_all("Sec-WebSocket-Extensions")

    @property
    def origin(self) -> Optional[str]:
        """The ``Origin`` header, or ``None`` (non-browser clients usually send none)."""
        return self.headers.get("Origin")

    @property
    def host(self) -> Optional[str]:
        """The ``Host`` header."""
        return self.headers.get("Host")

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent by the client, name → value; malformed cookies are skipped."""
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.get_all("Cookie"):
            for part in header.split(";"):
                try:
                    jar.load(part)
                except CookieError:
                    continue
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def upgrade(self) -> bool:
        """Whether the request asks for a WebSocket upgrade at all."""
        return "websocket" in parse_token_list(self.headers.get_all("Upgrade"))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} from {self.remote_address}>"


def _split_target(target: str) -> tuple[str, str]:
    """The path and query of a request-target (RFC 9112 §3.2), never raising.

    The origin-form every WebSocket client sends is split at the first ``?``: a
    leading ``//`` belongs to the path (``urlsplit`` would take it for an authority,
    and raises on ``//[``). The absolute-form goes through ``urlsplit``, and is split
    like the origin-form when its authority doesn't parse. A fragment is dropped.
    """
    target = target.partition("#")[0]
    if not target.startswith("/"):
        try:
            split = urlsplit(target)
        except ValueError:  # an authority urlsplit refuses, such as "[" unclosed
            pass
        else:
            return split.path, split.query
    path, _, query = target.partition("?")
    return path, query


def parse_token_list_keep_case(values: Iterable[str]) -> list[str]:
    """Comma-separated values as stripped, non-empty items, case preserved
    (subprotocol names are case-sensitive, RFC 6455 §4.1)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
