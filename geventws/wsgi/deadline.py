"""A deadline on every request head a gevent.pywsgi server reads (slow clients can't
hold it open): :class:`RequestDeadlineHandler`; and, for a graceful stop,
:func:`end_idle_keepalive`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Optional

import gevent
from gevent.pywsgi import WSGIHandler

from .._sockets import format_address

__all__ = ["RequestDeadlineHandler", "end_idle_keepalive"]

logger = logging.getLogger("geventws.wsgi")

#: The handlers of this process waiting for the next request of a keep-alive connection
#: (nothing of it read yet), with the deadline each waits under.
_IDLE: dict[RequestDeadlineHandler, gevent.Timeout] = {}


def end_idle_keepalive() -> None:
    """For a graceful stop of this process: close the keep-alive connections waiting for
    their next request, and from now on each one after its current response, so that
    a server (or gunicorn worker) waiting for its connections to end isn't held up
    until each idle one times out. Requests in progress are left to finish; a fresh
    connection still gets its first request. Never blocks."""
    RequestDeadlineHandler._stopping = True
    loop = gevent.get_hub().loop
    for handler in list(_IDLE):
        loop.run_callback(_end_if_idle, handler)


def _end_if_idle(handler: RequestDeadlineHandler) -> None:
    # A loop callback, in the hub: still waiting for its next request (nothing of it
    # read)? Then end it as its deadline would ("idle keep-alive connection closed").
    timer = _IDLE.get(handler)
    greenlet = handler._greenlet
    if timer is not None and greenlet is not None and not greenlet.dead:
        greenlet.throw(timer)


class RequestDeadlineHandler(WSGIHandler):  # type: ignore[misc]
    """A gevent.pywsgi handler class that reads every request head under a deadline.

    gevent.pywsgi waits for a request line and headers as long as the client takes, so
    a client sending a header byte now and then (slowloris) holds a connection, and a
    greenlet, forever. With this handler the request line and headers of each request
    must arrive within :attr:`handshake_timeout` seconds, counted from the moment the
    server starts waiting for them: when the connection is accepted, and after each
    response on a keep-alive connection (so an idle keep-alive connection is closed
    after it too). Past the deadline the connection is closed without an answer.
    Without TLS handshake done at accept (``do_handshake_on_connect=False``, as
    ``geventws serve --wsgi`` sets), the TLS handshake is part of the first read and
    under the deadline as well. The body and the application's time are not limited.

    ``WSGIServer(address, app, handler_class=RequestDeadlineHandler)``; subclass and
    set :attr:`handshake_timeout` to change it. :class:`WebSocketHandler` (and so
    ``geventws.worker.GeventWebSocketWorker``) inherits it.

    Logs, on ``geventws.wsgi``: INFO ``request head timed out: ADDRESS`` when a
    request was begun or none came on a new connection, DEBUG for an idle keep-alive
    connection closed.
    """

    #: Seconds for each request line and headers (the ``handshake_timeout`` option).
    handshake_timeout: ClassVar[float] = 10.0
    _requests = 0  # requests read on this connection
    _head_deadline: Optional[gevent.Timeout] = None
    _greenlet: Any = None  # the greenlet serving the connection, while it is idle
    # Set for good by end_idle_keepalive(): no next request on any connection.
    _stopping: ClassVar[bool] = False

    def handle_one_request(self) -> Any:
        if self._requests and self._stopping:
            return None  # a graceful stop: no next request on this connection
        timer = gevent.Timeout(self.handshake_timeout)
        self._head_deadline = timer
        timer.start()
        idle = True
        try:
            if self._requests:
                # Wait for the first byte apart, to tell an idle keep-alive connection
                # from a slow request.
                self._greenlet = gevent.getcurrent()
                _IDLE[self] = timer
                try:
                    self.rfile.peek(1)
                finally:
                    del _IDLE[self]
                    self._greenlet = None
            idle = False
            return super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            address = format_address(self.client_address)
            if idle:
                logger.debug("idle keep-alive connection closed: %s", address)
            else:
                logger.info("request head timed out: %s", address)
            return None  # pywsgi's loop ends and closes the connection
        except OSError:  # from the peek: reset by the client
            return None
        finally:
            self._head_deadline = None
            timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        finally:
            # The head is read (or refused): the application's time is its own.
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            self._requests += 1
