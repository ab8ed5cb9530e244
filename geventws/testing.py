"""Test a handler in-process, with the blocking client API: :class:`TestClient`.

.. code-block:: python

    from geventws.testing import TestClient

    def test_echo():
        client = TestClient(handle, subprotocols=["chat"])
        with client.connect("/path?x=1", subprotocols=["chat"]) as ws:
            ws.send("hello")
            assert ws.receive(timeout=5) == "hello"

Theory of operation
-------------------
Each :meth:`TestClient.connect` makes a connected pair of sockets
(:func:`gevent.socket.socketpair`: no port, no listener) and spawns a greenlet that
serves one end exactly as :class:`~geventws.WebSocketServer` serves an accepted
connection (:func:`geventws.server.serve_connection`: the upgrade request read under
``handshake_timeout``, the :class:`~geventws.upgrade.UpgradePolicy`, the handshake hook,
:func:`~geventws.upgrade.run_handler`, :func:`~geventws.upgrade.end_connection`, the
same log lines on ``geventws.server``). The calling greenlet drives the other end
through the sans-I/O :class:`~geventws.core.client_handshake.ClientHandshake` and a
client :class:`~geventws.Connection`, as :func:`geventws.connect` does. Everything runs
on the calling thread's gevent hub: while the test blocks in ``receive()`` or
``close()``, the hub runs the handler. Nothing is monkey-patched, so the test must block
through gevent (``gevent.sleep``, :mod:`gevent.queue`, :mod:`gevent.event`), not
``time.sleep`` or :mod:`threading`, which would stop the handler too.

The handler is wrapped to remember the exception it raises (the server's own handling of
it is unchanged: logged at ERROR, 500 or 1011), so that ``raise_server_exceptions``
can raise it in the test.

Every socket made here is closed, and every greenlet ends, when the client connection is
closed (the end of its ``with`` block) or the :class:`TestClient` is; a handler that
doesn't return within ``close_timeout`` after its client closed is killed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Union

import gevent
import gevent.socket

from ._deadline import Deadline
from .client import exchange_handshake
from .connection import Connection
from .core.client_handshake import ClientHandshake, Opened
from .core.frames import CloseCode
from .core.protocol import Side
from .core.proxy import TrustedProxies, check_proxy_headers
from .core.request import Request
from .core.uri import WebSocketURI, parse_uri
from .exceptions import ConnectionClosed, InvalidHandshake
from .options import ConnectionSettings, resolve
from .server import serve_connection
from .upgrade import Handler, UpgradePolicy

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ClientOptions, ServerOptions
    from .pubsub import Topics

__all__ = ["TestClient", "TestConnection"]

logger = logging.getLogger("geventws.testing")
client_logger = logging.getLogger("geventws.client")

#: The host of a path given to :meth:`TestClient.connect`.
DEFAULT_HOST = "testserver"


class _Served:
    """One handler started by a :class:`TestClient`: its greenlet and what it raised."""

    __slots__ = ("error", "greenlet", "reported")

    def __init__(self) -> None:
        self.greenlet: Optional[gevent.Greenlet] = None
        #: The exception the handler raised (not ``ConnectionClosed``), if any.
        self.error: Optional[Exception] = None
        #: Whether :attr:`error` was raised in the test already.
        self.reported = False


class TestClient:
    """Run ``handler(connection, request)`` in-process and connect to it.

    The keyword ``options`` are :class:`~geventws.WebSocketServer`'s (:doc:`/options`:
    ``subprotocols``, ``origins``, ``compression``, ``max_size``, ``close_timeout``,
    ``broker``...); an unknown name raises :class:`TypeError`. They apply as on a real
    server, with these differences: there is no TLS (``ssl_context`` raises
    :class:`ValueError`), ``backlog`` has nothing to apply to, and ``broker`` defaults
    to ``'local'`` whatever ``GEVENTWS_BROKER`` says (a test never publishes to a
    deployment's Redis unless it asks to). Every connection comes from
    ``remote_address`` (default ``("127.0.0.1", 50000)``, trusted as a proxy by the
    default ``forwarded_allow_ips``, so ``X-Forwarded-For`` headers given to
    :meth:`connect` are believed, as behind a local nginx).

    ``raise_server_exceptions=True`` raises, in the test, an exception the handler
    raised (other than :class:`~geventws.ConnectionClosed`): from :meth:`connect` when
    the handler failed before the connection opened (the client got a 500), else from
    :meth:`TestConnection.close` (the end of its ``with`` block) once the handler ended,
    else from :meth:`close`. Each exception is raised once. By default the handler's
    exception is only handled as a server does: logged at ERROR on
    ``geventws.server``, and the client gets 1011 (or 500 before the handshake).

    Use it from one thread, whose gevent hub runs the handlers. It is a context
    manager: leaving the ``with`` block calls :meth:`close`. Without ``with``, each
    connection cleans up when it is closed; :meth:`close` matters for a Redis ``broker``
    (its connections) and for connections the test left open.
    """

    __test__ = False  # not a test class for pytest, despite its name

    def __init__(
        self,
        handler: Handler,
        *,
        raise_server_exceptions: bool = False,
        remote_address: tuple[str, int] = ("127.0.0.1", 50000),
        **options: Unpack[ServerOptions],
    ) -> None:
        values = resolve("server", options, "TestClient")
        if values["ssl_context"] is not None:
            raise ValueError("TestClient has no TLS: test wss:// with a WebSocketServer")
        if values["broker"] is None:
            values["broker"] = "local"
        self.handler = handler
        self.raise_server_exceptions = raise_server_exceptions
        #: The address every connection comes from (before proxy headers).
        self.remote_address = remote_address
        self.trusted_proxies = TrustedProxies(values["forwarded_allow_ips"])
        self.proxy_headers = check_proxy_headers(values["proxy_headers"])
        self.handshake_timeout: float = values["handshake_timeout"]
        self.close_timeout: float = values["close_timeout"]
        self.max_connections: Optional[int] = values["max_connections"]
        #: Origins, subprotocols, compression, the connections' settings and the topics.
        self.policy = UpgradePolicy(values)
        #: The server-side connections whose handler is running, as
        #: :attr:`WebSocketServer.connections <geventws.WebSocketServer.connections>`.
        self.connections: set[Connection] = set()
        self._served: list[_Served] = []
        self._clients: set[TestConnection] = set()
        self._closed = False

    # -- as a server --------------------------------------------------------------------

    @property
    def topics(self) -> Topics:
        """The topics of the handlers' connections and their broker, as
        :attr:`WebSocketServer.topics <geventws.WebSocketServer.topics>`."""
        return self.policy.topics

    def publish(
        self, topic: str, message: Union[str, bytes, bytearray, memoryview], binary: bool = False
    ) -> int:
        """Send ``message`` to every subscriber of ``topic``, as
        :meth:`WebSocketServer.publish <geventws.WebSocketServer.publish>` does; return
        the number of local deliveries. Never blocks: the subscribers' handlers and
        clients see it once the test yields (``receive()`` does)."""
        data = message if isinstance(message, (str, bytes)) else bytes(message)
        return self.policy.topics.publish(topic, data, binary)

    # -- as a client --------------------------------------------------------------------

    def connect(self, path: str = "/", **options: Unpack[ClientOptions]) -> TestConnection:
        """Open a connection to the handler and return it, open.

        ``path`` is the request target (``"/chat?room=1"``, sent with ``Host:
        testserver``), or a ``ws://`` URI whose host and port make the ``Host`` header
        (every host reaches the handler). The keyword ``options`` are
        :func:`geventws.connect`'s: ``headers``, ``origin``, ``subprotocols``,
        ``compression``, ``open_timeout``, ``max_size``...; an unknown name raises
        :class:`TypeError`; ``ssl`` and ``server_hostname`` have nothing to apply to.
        Redirects the handler answers (``connection.reject(302, headers={"Location":
        ...})``) are followed to this same handler, up to ``max_redirects``, dropping
        credentials across origins as :func:`geventws.connect` does.

        Raises what :func:`geventws.connect` raises: :class:`~geventws.InvalidResponse`
        for any answer but a valid 101, with ``status``, ``headers`` and ``body`` (a
        handler's ``connection.reject(403, "no")``); :class:`TimeoutError` when the
        handler neither accepts nor rejects within ``open_timeout``;
        :class:`~geventws.InvalidURI`, and :class:`ValueError` for a ``wss://`` URI.
        With ``raise_server_exceptions``, the handler's own exception instead, when it
        raised before the connection opened. When it raises, the handler has ended (or
        was killed ``close_timeout`` after the failure) and every socket is closed.
        """
        if self._closed:
            raise RuntimeError("this TestClient is closed")
        values = resolve("client", options, "connect")
        settings = ConnectionSettings(values)
        handshake = ClientHandshake(
            _target(path),
            headers=values["headers"],
            origin=values["origin"],
            subprotocols=values["subprotocols"],
            deflate=settings.deflate,
            user_agent=values["user_agent"],
            sensitive_headers=values["sensitive_headers"],
            server_hostname=values["server_hostname"],
        )
        max_redirects: int = values["max_redirects"]
        deadline = Deadline(values["open_timeout"], f"timed out opening {path}")
        for _ in range(max_redirects + 1):
            uri = handshake.uri
            if uri.secure:
                raise InvalidHandshake(f"TestClient has no TLS: cannot open {uri.host_header}")
            client_sock, served = self._serve()
            connection: Optional[TestConnection] = None
            try:
                with deadline.timeout():
                    outcome, leftover = exchange_handshake(client_sock, handshake, settings)
                if isinstance(outcome, Opened):
                    connection = TestConnection(
                        client_sock,
                        settings,
                        outcome,
                        leftover=leftover,
                        uri=uri,
                        owner=self,
                        served=served,
                    )
                    self._clients.add(connection)
                    client_logger.debug("connection opened: %s", uri.resource_name)
                    return connection
            finally:
                if connection is None:
                    client_sock.close()
                    self._finish(served, Deadline(self.close_timeout))
                    self._raise_error(served)
            client_logger.debug("redirected to %s", outcome.location)
            handshake = handshake.redirect(outcome.location)
        raise InvalidHandshake(f"too many redirects (more than {max_redirects})")

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every client connection still open (1000), wait for every handler this
        client started, all within ``close_timeout``, kill the handlers still running
        then, and close the topics' broker. With ``raise_server_exceptions``, raise
        the first handler exception not raised yet. Idempotent; :meth:`connect` raises
        :class:`RuntimeError` afterwards."""
        deadline = Deadline(self.close_timeout)
        if not self._closed:
            self._closed = True
            closers = [gevent.spawn(Connection.close, ws) for ws in list(self._clients)]
            gevent.joinall(closers, timeout=deadline.remaining())
            gevent.killall(closers, block=True, timeout=1)
            self._clients.clear()
            for served in self._served:
                self._finish(served, deadline)
            self.policy.topics.close(timeout=min(self.close_timeout, 5.0))
        for served in list(self._served):
            self._raise_error(served)

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one connection's server side ---------------------------------------------------

    def _serve(self) -> tuple[Any, _Served]:
        """A new socket pair: the client's end, and the handler serving the other."""
        self._served = [s for s in self._served if not _settled(s, self.raise_server_exceptions)]
        active = sum(1 for s in self._served if s.greenlet is not None and not s.greenlet.dead)
        served = _Served()
        user_handler = self.handler

        def handler(connection: Connection, request: Request) -> None:
            try:
                user_handler(connection, request)
            except ConnectionClosed:
                raise
            except Exception as exc:
                served.error = exc
                raise

        client_sock, server_sock = gevent.socket.socketpair()
        served.greenlet = gevent.spawn(
            serve_connection,
            server_sock,
            self.remote_address,
            handler,
            self.policy,
            handshake_timeout=self.handshake_timeout,
            trusted_proxies=self.trusted_proxies,
            proxy_headers=self.proxy_headers,
            max_connections=self.max_connections,
            active=active + 1,
            connections=self.connections,
        )
        self._served.append(served)
        return client_sock, served

    def _finish(self, served: _Served, deadline: Deadline) -> None:
        """Wait until ``deadline`` for ``served``'s handler to return, then kill it
        (logged at WARNING). Never raises."""
        greenlet = served.greenlet
        if greenlet is None or greenlet.dead:
            return
        greenlet.join(deadline.remaining())
        if not greenlet.dead:
            logger.warning(
                "handler %r still running %.3gs after its client closed: killed",
                getattr(self.handler, "__name__", self.handler),
                self.close_timeout,
            )
            greenlet.kill(block=True, timeout=self.close_timeout)

    def _raise_error(self, served: _Served) -> None:
        """Raise ``served``'s handler exception, once, with ``raise_server_exceptions``."""
        error = served.error
        if error is not None and self.raise_server_exceptions and not served.reported:
            served.reported = True
            raise error


class TestConnection(Connection):
    """The client side of a :class:`TestClient` connection: a client
    :class:`~geventws.Connection` (``send``, ``receive``, iteration, ``ping``,
    ``subprotocol``, ``extensions``, ``response_headers``...) whose :meth:`close` also
    waits for the handler."""

    __test__ = False
    __slots__ = ("_owner", "_served")

    def __init__(
        self,
        sock: Any,
        settings: ConnectionSettings,
        opened: Opened,
        *,
        leftover: bytes,
        uri: WebSocketURI,
        owner: TestClient,
        served: _Served,
    ) -> None:
        super().__init__(
            sock,
            Side.CLIENT,
            settings,
            protocol=opened.protocol,
            remote_address=(uri.host, uri.port),
            leftover=leftover,
            logger=client_logger,
        )
        self.subprotocol = opened.subprotocol
        self.response_headers = opened.headers
        self.extensions = opened.extensions
        self._owner = owner
        self._served = served

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close as :meth:`Connection.close <geventws.Connection.close>` does (within
        this connection's ``close_timeout``), then wait for the handler to return
        within the :class:`TestClient`'s ``close_timeout``, counted from the call;
        a handler still running then is killed (a WARNING on ``geventws.testing``).

        With ``raise_server_exceptions``, then raises the handler's exception, if it
        raised one that wasn't raised in the test yet. Idempotent otherwise."""
        owner = self._owner
        deadline = Deadline(owner.close_timeout)
        super().close(code, reason)
        owner._clients.discard(self)
        owner._finish(self._served, deadline)
        owner._raise_error(self._served)


def _settled(served: _Served, raising: bool) -> bool:
    """Whether a handler is over and owes the test nothing."""
    greenlet = served.greenlet
    done = greenlet is not None and greenlet.dead
    return done and (served.error is None or served.reported or not raising)


def _target(path: str) -> WebSocketURI:
    """The URI of :meth:`TestClient.connect`'s ``path``."""
    if path.startswith("/"):
        return parse_uri(f"ws://{DEFAULT_HOST}{path}")
    uri = parse_uri(path)
    if uri.secure:
        raise ValueError(f"TestClient has no TLS: use ws:// or a path, not {path!r}")
    return uri
