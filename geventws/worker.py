"""A gunicorn worker that serves WebSockets beside the WSGI application.

``gunicorn -k geventws.worker.GeventWebSocketWorker app:app`` runs the application on
gunicorn's gevent.pywsgi worker with :class:`geventws.wsgi.WebSocketHandler`, so:

* :class:`geventws.wsgi.WebSocketMiddleware` routes work (as they also do with
  ``-k gevent_pywsgi``), and
* applications written for gevent-websocket (``environ["wsgi.websocket"]``) run
  unchanged, as with gevent-websocket's own worker.

On SIGTERM (a graceful stop or restart) every WebSocket connection is closed with 1001
"going away" at once, so handlers finish well within gunicorn's ``graceful_timeout``
instead of being killed with it.

gunicorn's plain ``gevent`` worker parses HTTP itself and cannot hand a connection over
cleanly; use this worker (or ``gevent_pywsgi``) instead. This is the only geventws
module that imports gunicorn (``pip install geventws[gunicorn]``).
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from .wsgi import WebSocketHandler, shutdown

__all__ = ["GeventWebSocketWorker"]


class _Handler(WebSocketHandler, PyWSGIHandler):  # type: ignore[misc]
    """geventws' WebSocket handling with gunicorn's access log and environ."""


class GeventWebSocketWorker(GeventPyWSGIWorker):  # type: ignore[misc]
    """gunicorn's ``gevent_pywsgi`` worker with WebSocket support (see the module)."""

    wsgi_handler = _Handler

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(shutdown)  # out of the signal handler: closing waits for peers
