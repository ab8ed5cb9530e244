"""redis-py connections on gevent sockets, from a Redis URL, for
:class:`~geventws.pubsub.redis.RedisBroker`.

redis-py's connection classes open standard-library sockets, which block the whole hub
unless the process is monkey-patched. These subclasses open them with
:mod:`gevent.socket` (and TLS with :mod:`gevent.ssl`) instead, and keep everything else
of redis-py: URL options, ``AUTH``/``HELLO``, ``SELECT``, the RESP parser. So the broker
works the same in a patched process (``geventws serve``) and an unpatched one, and
never patches anything.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import gevent.ssl
import redis.connection
import redis.exceptions
from gevent import socket as gsocket

__all__ = ["CONNECTION_CLASSES", "connection_settings", "redact"]

#: URL options that belong to redis-py's pool or retry logic, not to a connection: the
#: broker does its own reconnecting and health checks.
_IGNORED_OPTIONS = (
    "max_connections",
    "timeout",
    "retry",
    "retry_on_timeout",
    "retry_on_error",
    "health_check_interval",
)


def _tcp_socket(conn: Any) -> Any:
    """A connected gevent TCP socket with the options redis-py would set."""
    sock = gsocket.create_connection((conn.host, conn.port), timeout=conn.socket_connect_timeout)
    ok = False
    try:
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        if conn.socket_keepalive:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
            for option, value in conn.socket_keepalive_options.items():
                sock.setsockopt(gsocket.IPPROTO_TCP, option, value)
        sock.settimeout(conn.socket_timeout)
        ok = True
        return sock
    finally:
        if not ok:
            sock.close()


def _tls_context(conn: Any) -> ssl.SSLContext:
    """A :mod:`gevent.ssl` context with redis-py's ``ssl_*`` settings of ``conn``."""
    if getattr(conn, "ssl_validate_ocsp", False) or getattr(
        conn, "ssl_validate_ocsp_stapled", False
    ):
        raise redis.exceptions.RedisError("OCSP validation is not supported by RedisBroker")
    context: ssl.SSLContext = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    context.check_hostname = bool(conn.check_hostname)
    context.verify_mode = conn.cert_reqs
    for flag in getattr(conn, "ssl_include_verify_flags", None) or ():
        context.verify_flags |= flag
    for flag in getattr(conn, "ssl_exclude_verify_flags", None) or ():
        context.verify_flags &= ~flag
    if conn.certfile or conn.keyfile:
        context.load_cert_chain(
            certfile=conn.certfile,
            keyfile=conn.keyfile,
            password=getattr(conn, "certificate_password", None),
        )
    ca_data = getattr(conn, "ca_data", None)
    ca_path = getattr(conn, "ca_path", None)
    if conn.ca_certs or ca_path or ca_data:
        context.load_verify_locations(cafile=conn.ca_certs, capath=ca_path, cadata=ca_data)
    min_version = getattr(conn, "ssl_min_version", None)
    if min_version is not None:
        context.minimum_version = min_version
    ciphers = getattr(conn, "ssl_ciphers", None)
    if ciphers:
        context.set_ciphers(ciphers)
    return context


class _GeventConnection(redis.connection.Connection):
    """redis-py's TCP connection on a gevent socket."""

    def _connect(self) -> Any:
        return _tcp_socket(self)


class _GeventSSLConnection(redis.connection.SSLConnection):
    """redis-py's TLS connection (``rediss://``) on gevent's TLS."""

    def _connect(self) -> Any:
        sock = _tcp_socket(self)
        wrapped: Any = None
        ok = False
        try:
            # The handshake apart, so that the TLS socket (which owns the descriptor
            # once it exists) is closed whatever interrupts it, a kill() included.
            wrapped = _tls_context(self).wrap_socket(
                sock, server_hostname=self.host, do_handshake_on_connect=False
            )
            wrapped.do_handshake()
            ok = True
            return wrapped
        finally:
            if not ok:
                if wrapped is not None:
                    wrapped.close()
                sock.close()


class _GeventUnixConnection(redis.connection.UnixDomainSocketConnection):
    """redis-py's Unix-socket connection (``unix://``) on a gevent socket."""

    def _connect(self) -> Any:
        sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        ok = False
        try:
            sock.settimeout(self.socket_connect_timeout)
            sock.connect(self.path)
            sock.settimeout(self.socket_timeout)
            ok = True
            return sock
        finally:
            if not ok:
                sock.close()


#: The connection class for each URL scheme.
CONNECTION_CLASSES: dict[str, type[Any]] = {
    "redis": _GeventConnection,
    "rediss": _GeventSSLConnection,
    "unix": _GeventUnixConnection,
}


def redact(url: str) -> str:
    """``url`` without credentials or query, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connection_settings(
    url: str, timeout: float, options: dict[str, Any]
) -> tuple[type[Any], dict[str, Any]]:
    """The connection class and keyword arguments of a broker connection to ``url``:
    redis-py's URL options, then ``options``, ``timeout`` for connecting and for each
    reply unless given; RESP2, bytes, and no health check inside redis-py (it would
    read on the subscriber connection, which only the broker's reader reads). Raises
    :class:`ValueError` for a URL or option that redis-py does not accept."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in CONNECTION_CLASSES:
        raise ValueError(f"not a Redis URL: {redact(url)!r}")
    parse_url: Any = redis.connection.parse_url  # untyped in redis-py
    kwargs: dict[str, Any] = parse_url(url)
    kwargs.pop("connection_class", None)
    for name in _IGNORED_OPTIONS:
        kwargs.pop(name, None)
    kwargs.update(options)
    kwargs.setdefault("socket_timeout", timeout)
    kwargs.setdefault("socket_connect_timeout", timeout)
    kwargs.update(health_check_interval=0, decode_responses=False, protocol=2)
    connection_class = CONNECTION_CLASSES[scheme]
    try:
        connection_class(**kwargs)  # checks the options; connects nothing
    except (TypeError, redis.exceptions.RedisError) as exc:
        raise ValueError(f"bad Redis URL or option: {exc}") from exc
    return connection_class, kwargs
