"""A gunicorn worker that serves WebSockets beside the WSGI application.

``gunicorn -k geventws.worker.GeventWebSocketWorker app:app`` runs the application on
gunicorn's gevent.pywsgi worker with :class:`geventws.wsgi.WebSocketHandler`, so:

* :class:`geventws.wsgi.WebSocketMiddleware` routes work (as they also do with
  ``-k gevent_pywsgi``), and
* applications written for gevent-websocket (``environ["wsgi.websocket"]``) run
  unchanged, as with gevent-websocket's own worker.

Behind a reverse proxy, gunicorn's own ``--forwarded-allow-ips`` setting (default
``127.0.0.1,::1``, or ``$FORWARDED_ALLOW_IPS``) decides whose ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed: for requests from those proxies this worker sets
``REMOTE_ADDR``, ``REMOTE_PORT`` and ``wsgi.url_scheme`` to the client's (see
:mod:`geventws.core.proxy`), for every request, so WebSocket handlers
(``request.remote_address``, ``request.scheme``), the WSGI application and gunicorn's
access log all see the client. (gunicorn's other workers only set ``wsgi.url_scheme``.)

Every request line and headers must arrive within :attr:`GeventWebSocketWorker.handshake_timeout`
seconds (10; subclass the worker to change it), counted from the moment the worker waits
for them, on a new connection and between requests on a keep-alive one: slow clients
(slowloris) and idle keep-alive connections are closed (see
:class:`geventws.wsgi.RequestDeadlineHandler`). With TLS, the TLS handshake happens on
the first read (gunicorn's ``do_handshake_on_connect`` default), so under that deadline
too, rather than at accept with no deadline.

On SIGTERM (a graceful stop or restart) every WebSocket connection is closed with 1001
"going away" at once, so handlers finish well within gunicorn's ``graceful_timeout``
instead of being killed with it; idle HTTP keep-alive connections are closed too (the
others after their response), which gunicorn would otherwise wait for.

gunicorn's plain ``gevent`` worker parses HTTP itself and cannot hand a connection over
cleanly; use this worker (or ``gevent_pywsgi``) instead. This is the only geventws
module that imports gunicorn (``pip install geventws[gunicorn]``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from .core.proxy import TrustedProxies, apply_to_environ
from .wsgi import WebSocketHandler, shutdown

__all__ = ["GeventWebSocketWorker"]


class _Handler(WebSocketHandler, PyWSGIHandler):  # type: ignore[misc]
    """geventws' WebSocket handling with gunicorn's access log and environ, and the
    client's address and scheme from trusted proxies."""

    trusted_proxies: ClassVar[TrustedProxies] = TrustedProxies("127.0.0.1,::1")

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        apply_to_environ(environ, self.trusted_proxies)
        return environ


class _Server(PyWSGIServer):  # type: ignore[misc]
    """gunicorn's server, with the TLS handshake on the first read (under the
    handler's request deadline) instead of at accept, where nothing bounds it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "ssl_context" in kwargs:
            kwargs.setdefault("do_handshake_on_connect", False)
        super().__init__(*args, **kwargs)


class GeventWebSocketWorker(GeventPyWSGIWorker):  # type: ignore[misc]
    """gunicorn's ``gevent_pywsgi`` worker with WebSocket support (see the module)."""

    server_class = _Server
    wsgi_handler = _Handler
    #: Seconds a client has for each request line and headers (TLS handshake included).
    handshake_timeout: ClassVar[float] = 10.0

    def init_process(self) -> None:
        trusted = TrustedProxies(self.cfg.forwarded_allow_ips)
        timeout = self.handshake_timeout

        class Handler(_Handler):
            trusted_proxies = trusted
            handshake_timeout = timeout

        self.wsgi_handler = Handler
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(shutdown)  # out of the signal handler: closing waits for peers
