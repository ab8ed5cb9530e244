"""Flask and geventws on one port: pages and a WebSocket sharing Flask's session.

Log in on the page (a name goes into Flask's signed session cookie), then the page
opens ``/ws``; the WebSocket handler reads the same session from the upgrade request's
cookies, so only logged-in users get in. Run with gevent's WSGI server::

    python -m geventws.examples.flask_app

or under gunicorn::

    gunicorn -k geventws.worker.GeventWebSocketWorker geventws.examples.flask_app:app

Needs Flask (``pip install geventws[flask]``).
"""

from __future__ import annotations

import os

from flask import Flask, redirect, render_template_string, request, session
from werkzeug.wrappers import Response

import geventws
from geventws.wsgi import WebSocketMiddleware

app = Flask(__name__)
app.secret_key = os.environ.get("SECRET_KEY", "dev only: set SECRET_KEY")

PAGE = """<!doctype html><meta charset="utf-8"><title>Flask + geventws</title>
{% if user %}
  <p>Logged in as <b>{{ user }}</b>. <a href="/logout">Log out</a></p>
  <ul id="log"></ul>
  <form id="form"><input id="text" autocomplete="off"><button>Send</button></form>
  <script>
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://")
                             + location.host + "/ws");
    const log = document.getElementById("log");
    ws.onmessage = (e) => {
      const li = document.createElement("li"); li.textContent = e.data; log.appendChild(li);
    };
    document.getElementById("form").onsubmit = (e) => {
      e.preventDefault(); ws.send(document.getElementById("text").value);
    };
  </script>
{% else %}
  <form method="post" action="/login"><input name="name" placeholder="Your name">
  <button>Log in</button></form>
{% endif %}
"""


@app.get("/")
def index() -> str:
    return render_template_string(PAGE, user=session.get("user"))


@app.post("/login")
def login() -> Response:
    session["user"] = request.form.get("name", "").strip()[:32] or "anonymous"
    return redirect("/")


@app.get("/logout")
def logout() -> Response:
    session.pop("user", None)
    return redirect("/")


def notes(connection: geventws.Connection, ws_request: geventws.Request) -> None:
    """A WebSocket for logged-in users only: Flask's session comes from the same
    cookies, read inside a Flask request context built from the upgrade's environ."""
    assert ws_request.environ is not None  # always set behind the middleware
    with app.request_context(ws_request.environ):
        user = session.get("user")
    if not user:
        return connection.reject(401, "log in first\n")
    connection.accept()
    connection.send(f"hello {user}")
    for message in connection:
        if isinstance(message, str):
            connection.send(f"{user}: {message}")


# WebSocket routes first; everything else is Flask as usual.
app.wsgi_app = WebSocketMiddleware(app.wsgi_app, {"/ws": notes})  # type: ignore[method-assign]


if __name__ == "__main__":
    from gevent.pywsgi import WSGIServer

    print("serving on http://127.0.0.1:8000/")
    WSGIServer(("127.0.0.1", 8000), app).serve_forever()
