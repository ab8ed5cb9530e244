"""Every option of geventws, in one table: name, type, default, documentation, flag.

The servers (:class:`~geventws.WebSocketServer`, :func:`~geventws.serve`,
:class:`~geventws.wsgi.WebSocketMiddleware`), :func:`~geventws.connect`, the command
line and the reference documentation all derive from :data:`OPTIONS`: an option has one
name everywhere (``max_size`` ↔ ``--max-size``) and one default. The keyword arguments
are typed by the :class:`~typing.TypedDict` classes below (checked against the table by
``tests/test_options.py``); :func:`resolve` fills in defaults and refuses unknown names.

Scopes say where an option applies:

``connection``
    every connection, server or client side;
``upgrade``
    servers deciding upgrades: the standalone server and the WSGI middleware;
``server``
    the standalone server only (it owns accepting, TLS and the request deadline);
``client``
    :func:`~geventws.connect` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ._values import (
    parse_bounded,
    parse_compression,
    parse_count,
    parse_forwarded_allow_ips,
    parse_header,
    parse_max_queue,
    parse_optional_count,
    parse_origin,
    parse_positive,
    parse_positive_seconds,
    parse_proxy_headers,
    parse_seconds,
    parse_size,
)
from .core.assembler import DEFAULT_MAX_FRAGMENTS
from .core.deflate import DeflateOptions, deflate_options

if TYPE_CHECKING:
    import ssl

    from typing_extensions import TypedDict

    from .core.headers import HeadersLike
else:
    from typing import TypedDict

__all__ = [
    "OPTIONS",
    "Option",
    "ConnectionOptions",
    "UpgradeOptions",
    "ServerOptions",
    "ClientOptions",
    "ConnectionSettings",
    "resolve",
    "options_for",
    "parse_size",
    "parse_seconds",
]

#: The scopes of each API: which options it takes.
API_SCOPES: dict[str, frozenset[str]] = {
    "server": frozenset({"connection", "upgrade", "server"}),
    "middleware": frozenset({"connection", "upgrade"}),
    "client": frozenset({"connection", "client"}),
}


# -- the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cli:
    """How an option appears on the command line."""

    parse: Optional[Callable[[str], Any]] = None  #: str → value; raises ValueError
    metavar: Optional[str] = None
    flag: Optional[str] = None  #: default: ``--`` and the name with dashes
    repeatable: bool = False  #: the flag may be given several times (a list)
    env: Optional[str] = None  #: an environment variable that overrides the default

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """One option: ``name`` (the keyword argument), ``type`` (as the keyword's
    annotation), ``default``, ``doc`` (one paragraph, reStructuredText), ``scope`` (see
    the module doc) and how the command line takes it (``cli``; ``None``: not a flag)."""

    name: str
    type: str
    default: Any
    doc: str
    scope: str
    cli: Optional[Cli] = field(default=None)

    @property
    def flag(self) -> Optional[str]:
        return None if self.cli is None else self.cli.flag_for(self.name)


OPTIONS: tuple[Option, ...] = (
    # -- every connection
    Option(
        "max_size",
        "Optional[int]",
        2**20,
        "The largest message accepted, in bytes; over it the connection closes with "
        "1009 (decided from the frame header, before the payload is read). ``None``: no "
        "limit.",
        "connection",
        Cli(parse_size, "BYTES"),
    ),
    Option(
        "max_fragments",
        "Optional[int]",
        DEFAULT_MAX_FRAGMENTS,
        "The most frames one message may come in; the next one closes with 1009. "
        "``None``: no limit.",
        "connection",
        Cli(parse_optional_count, "N"),
    ),
    Option(
        "max_queue",
        "Union[int, tuple[int, int]]",
        16,
        "How many received messages may wait for the application before reading stops "
        "(TCP then pushes back on the peer); reading resumes at a quarter of it, or give "
        "``(high, low)`` (``HIGH,LOW`` on the command line).",
        "connection",
        Cli(parse_max_queue, "N"),
    ),
    Option(
        "close_timeout",
        "float",
        10.0,
        "Seconds for the closing handshake and the end of TCP after it: ``close()`` "
        "returns within it; also the time a graceful stop gives handlers.",
        "connection",
        Cli(parse_positive_seconds, "SECONDS"),
    ),
    Option(
        "ping_interval",
        "Optional[float]",
        20.0,
        "Keepalive: seconds between pings. ``None``: no keepalive pings.",
        "connection",
        Cli(parse_seconds, "SECONDS"),
    ),
    Option(
        "ping_timeout",
        "Optional[float]",
        20.0,
        "Keepalive: a peer that hasn't answered a ping this many seconds after it was "
        "queued is closed with 1011. ``None``: wait forever.",
        "connection",
        Cli(parse_seconds, "SECONDS"),
    ),
    Option(
        "send_timeout",
        "Optional[float]",
        None,
        "Seconds a write may make no progress (a peer that doesn't read) before the "
        "connection is closed with 1008. ``None``: writes wait as long as it takes.",
        "connection",
        Cli(parse_seconds, "SECONDS"),
    ),
    Option(
        "compression",
        "Optional[str]",
        "deflate",
        "``'deflate'`` negotiates permessage-deflate (RFC 7692); ``None`` turns compression off.",
        "connection",
        Cli(parse_compression, "deflate|none"),
    ),
    Option(
        "compression_window_bits",
        "int",
        12,
        "zlib's LZ77 window for compressing, as a power of two (9-15; 12 is 4 KiB); a "
        "server also asks clients to compress with it when they let it.",
        "connection",
        Cli(parse_bounded(9, 15), "9-15"),
    ),
    Option(
        "compression_mem_level",
        "int",
        5,
        "zlib's memory level for compressing (1-9): smaller uses less memory per "
        "connection and compresses less.",
        "connection",
        Cli(parse_bounded(1, 9), "1-9"),
    ),
    Option(
        "compression_threshold",
        "int",
        128,
        "Messages shorter than this many bytes are sent uncompressed.",
        "connection",
        Cli(parse_count, "BYTES"),
    ),
    Option(
        "compression_level",
        "int",
        -1,
        "zlib's compression level, 0-9 (-1: zlib's default, 6). Lower is faster with "
        "less compression.",
        "connection",
        Cli(parse_bounded(-1, 9), "0-9"),
    ),
    # -- servers deciding upgrades
    Option(
        "origins",
        "Optional[Iterable[Optional[str]]]",
        None,
        "Allowed ``Origin`` values (``scheme://host[:port]``); other origins get HTTP "
        "403 before the handler runs. Include ``None`` to allow clients that send no "
        "``Origin`` (non-browsers). ``None``: every origin is allowed.",
        "upgrade",
        Cli(parse_origin, "ORIGIN", flag="--origin", repeatable=True),
    ),
    Option(
        "subprotocols",
        "Optional[Iterable[str]]",
        None,
        "Subprotocols the server supports, in order of preference; picked at "
        "``accept()`` unless the handler chooses.",
        "upgrade",
        Cli(str, "NAME", flag="--subprotocol", repeatable=True),
    ),
    Option(
        "broker",
        "Optional[str]",
        None,
        "Where topics (``connection.subscribe``/``publish``) meet other processes: a "
        "Redis URL (``redis://host:6379/0``, ``rediss://user:password@host/0``, "
        "``unix:///path``; needs the ``redis`` extra), or ``'local'`` for this process "
        "only. ``None``: the ``GEVENTWS_BROKER`` environment variable when set (how "
        "gunicorn workers and ``--workers`` get it), else ``'local'``.",
        "upgrade",
        Cli(str, "URL", env="GEVENTWS_BROKER"),
    ),
    # -- the standalone server
    Option(
        "handshake_timeout",
        "float",
        10.0,
        "Seconds a client has to complete the TLS handshake and send its whole upgrade "
        "request; slower clients are dropped. Under ``geventws serve --wsgi`` and the "
        "gunicorn worker, it bounds every request head and idle keep-alive too.",
        "server",
        Cli(parse_positive_seconds, "SECONDS"),
    ),
    Option(
        "max_connections",
        "Optional[int]",
        None,
        "Connections served at once (handshakes included); beyond it new clients get "
        "HTTP 503 with ``Retry-After``. ``None``: no limit.",
        "server",
        Cli(parse_optional_count, "N"),
    ),
    Option(
        "ssl_context",
        "Optional[ssl.SSLContext]",
        None,
        "A server :class:`ssl.SSLContext` to serve ``wss://`` (on the command line: "
        "``--certfile`` and ``--keyfile``).",
        "server",
    ),
    Option(
        "forwarded_allow_ips",
        "Union[str, Iterable[str]]",
        "127.0.0.1",
        "Reverse proxies whose headers give the client's address and scheme "
        "(``request.remote_address``, ``request.scheme``): addresses and networks "
        "(comma-separated on the command line), or ``'*'`` for any peer. Headers from "
        "anyone else are ignored. On the command line the default is "
        "``$FORWARDED_ALLOW_IPS`` when set, as with uvicorn and gunicorn.",
        "server",
        Cli(parse_forwarded_allow_ips, "IPS", env="FORWARDED_ALLOW_IPS"),
    ),
    Option(
        "proxy_headers",
        "Optional[str]",
        "x-forwarded",
        "Which headers those proxies set: ``'x-forwarded'`` (``X-Forwarded-For`` and "
        "``X-Forwarded-Proto``), ``'forwarded'`` (RFC 7239) or ``None`` to ignore both. "
        "Only one family is read, so a client can't choose its address by sending the "
        "other.",
        "server",
        Cli(parse_proxy_headers, "x-forwarded|forwarded|none"),
    ),
    Option(
        "backlog",
        "Optional[int]",
        None,
        "The listening socket's backlog (``None``: gevent's default).",
        "server",
        Cli(parse_positive, "N"),
    ),
    # -- the client
    Option(
        "headers",
        "Optional[HeadersLike]",
        None,
        "Header fields added to the upgrade request.",
        "client",
        Cli(parse_header, "'NAME: VALUE'", flag="--header", repeatable=True),
    ),
    Option(
        "origin",
        "Optional[str]",
        None,
        "The ``Origin`` header to send.",
        "client",
        Cli(str, "ORIGIN"),
    ),
    Option(
        "client_subprotocols",
        "Optional[Sequence[str]]",
        None,
        "Subprotocols to offer, in order of preference (the keyword argument is ``subprotocols``).",
        "client",
        Cli(str, "NAME", flag="--subprotocol", repeatable=True),
    ),
    Option(
        "open_timeout",
        "Optional[float]",
        10.0,
        "Seconds for the whole opening: DNS, TCP, TLS, the handshake and redirects.",
        "client",
        Cli(parse_seconds, "SECONDS"),
    ),
    Option(
        "ssl",
        "Optional[ssl.SSLContext]",
        None,
        "The :class:`ssl.SSLContext` for ``wss://`` (default: "
        ":func:`ssl.create_default_context`, which verifies certificates; on the "
        "command line: ``--cafile`` and ``--insecure``).",
        "client",
    ),
    Option(
        "server_hostname",
        "Optional[str]",
        None,
        "The TLS server name to send and verify instead of the URI's host (for that "
        "host only: not after a redirect to another one).",
        "client",
    ),
    Option(
        "max_redirects",
        "int",
        10,
        "Redirects (301, 302, 303, 307, 308) followed before giving up.",
        "client",
        Cli(parse_count, "N"),
    ),
    Option(
        "user_agent",
        "Optional[str]",
        "geventws",
        "The ``User-Agent`` header, unless ``headers`` give one (``None``: none).",
        "client",
    ),
    Option(
        "sensitive_headers",
        "Iterable[str]",
        (),
        "Header names dropped when a redirect leads to another origin, besides "
        "``Authorization``, ``Cookie`` and ``Proxy-Authorization``, which always are.",
        "client",
    ),
)

#: Options whose keyword argument differs from the table's name (to keep names unique).
_KEYWORDS = {"client_subprotocols": "subprotocols"}


def keyword(option: Option) -> str:
    """The keyword argument of ``option``."""
    return _KEYWORDS.get(option.name, option.name)


def options_for(api: str) -> list[Option]:
    """The options an API takes: ``"server"``, ``"middleware"`` or ``"client"``."""
    scopes = API_SCOPES[api]
    return [option for option in OPTIONS if option.scope in scopes]


def resolve(api: str, given: Mapping[str, Any], caller: str) -> dict[str, Any]:
    """Every option of ``api``, from ``given`` keyword arguments or the defaults.

    Raises :class:`TypeError` for a name ``api`` doesn't take (as Python does for an
    unexpected keyword argument of ``caller``).
    """
    values = {keyword(option): option.default for option in options_for(api)}
    for name in given:
        if name not in values:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
    values.update(given)
    return values


# -- what the keyword arguments look like to a type checker -----------------------------


class ConnectionOptions(TypedDict, total=False):
    """The ``connection`` options (see :data:`OPTIONS`)."""

    max_size: Optional[int]
    max_fragments: Optional[int]
    max_queue: Union[int, tuple[int, int]]
    close_timeout: float
    ping_interval: Optional[float]
    ping_timeout: Optional[float]
    send_timeout: Optional[float]
    compression: Optional[str]
    compression_window_bits: int
    compression_mem_level: int
    compression_threshold: int
    compression_level: int


class UpgradeOptions(ConnectionOptions, total=False):
    """The options of :class:`~geventws.wsgi.WebSocketMiddleware`."""

    origins: Optional[Iterable[Optional[str]]]
    subprotocols: Optional[Iterable[str]]
    broker: Optional[str]


class ServerOptions(UpgradeOptions, total=False):
    """The options of :class:`~geventws.WebSocketServer` and :func:`~geventws.serve`."""

    handshake_timeout: float
    max_connections: Optional[int]
    ssl_context: Optional[ssl.SSLContext]
    forwarded_allow_ips: Union[str, Iterable[str]]
    proxy_headers: Optional[str]
    backlog: Optional[int]


class ClientOptions(ConnectionOptions, total=False):
    """The options of :func:`~geventws.connect`."""

    headers: Optional[HeadersLike]
    origin: Optional[str]
    subprotocols: Optional[Sequence[str]]
    open_timeout: Optional[float]
    ssl: Optional[ssl.SSLContext]
    server_hostname: Optional[str]
    max_redirects: int
    user_agent: Optional[str]
    sensitive_headers: Iterable[str]


# -- what connections share ----------------------------------------------------------------


class ConnectionSettings:
    """The ``connection`` options, resolved and checked once, shared by every
    connection a server (or a ``connect()`` call) makes."""

    __slots__ = (
        "close_timeout",
        "deflate",
        "max_fragments",
        "max_queue",
        "max_queue_low",
        "max_size",
        "ping_interval",
        "ping_timeout",
        "send_timeout",
    )

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.max_size: Optional[int] = values["max_size"]
        self.max_fragments: Optional[int] = values["max_fragments"]
        if self.max_fragments is not None and self.max_fragments < 1:
            raise ValueError("max_fragments must be at least 1 (or None)")
        max_queue = values["max_queue"]
        high, low = (max_queue, None) if isinstance(max_queue, int) else max_queue
        #: Reading stops once this many messages wait.
        self.max_queue: int = max(1, high)
        #: Reading resumes once the queue is down to this many messages.
        self.max_queue_low: int = max(
            0, min(self.max_queue - 1, low if low is not None else high // 4)
        )
        self.close_timeout: float = values["close_timeout"]
        self.ping_interval: Optional[float] = values["ping_interval"]
        self.ping_timeout: Optional[float] = values["ping_timeout"]
        self.send_timeout: Optional[float] = values["send_timeout"]
        #: The permessage-deflate settings, or ``None`` without compression.
        self.deflate: Optional[DeflateOptions] = deflate_options(
            values["compression"],
            values["compression_window_bits"],
            values["compression_mem_level"],
            values["compression_threshold"],
            values["compression_level"],
        )

    @classmethod
    def defaults(cls) -> ConnectionSettings:
        """The settings of every default."""
        return cls(resolve("client", {}, "ConnectionSettings"))
