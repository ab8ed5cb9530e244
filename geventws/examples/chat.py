"""The demo: a chat room served on one port, an HTML page over HTTP and the WebSocket
beside it.

Run it and open http://127.0.0.1:8000/ in two browser tabs::

    geventws serve geventws.examples.chat:handle --wsgi geventws.examples.chat:app

``app`` is a plain WSGI application (the page); ``handle`` is the WebSocket handler.
Every message a participant sends is broadcast to everyone in the room as JSON:
``{"type": "message", "name": ..., "text": ...}``, plus ``"join"``/``"leave"`` notices
with the number of people present.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Iterable

import geventws

#: Everyone in the room.
ROOM: set[geventws.Connection] = set()
_guests = itertools.count(1)
MAX_TEXT = 2000


def _announce(kind: str, name: str) -> None:
    event = {"type": kind, "name": name, "present": len(ROOM)}
    geventws.broadcast(ROOM, json.dumps(event))


def handle(connection: geventws.Connection, request: geventws.Request) -> None:
    """One participant: join, relay each message to the room, leave."""
    name = (request.args.get("name") or "").strip()[:32] or f"guest-{next(_guests)}"
    connection.accept()
    ROOM.add(connection)
    try:
        _announce("join", name)
        for message in connection:
            if not isinstance(message, str) or not message.strip():
                continue
            text = message.strip()[:MAX_TEXT]
            geventws.broadcast(ROOM, json.dumps({"type": "message", "name": name, "text": text}))
    finally:
        ROOM.discard(connection)
        _announce("leave", name)


PAGE = b"""<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geventws chat</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; }
  #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }
  #log p { margin: .2em 0; } .notice { color: #777; font-style: italic; }
  form { display: flex; gap: .5em; margin-top: .5em; } #text { flex: 1; }
</style>
<h1>geventws chat</h1>
<p id="status">connecting...</p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" placeholder="Say something"
  autofocus><button>Send</button></form>
<script>
const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const name = params.get("name") || "";
const ws = new WebSocket(scheme + location.host + "/chat?name=" + encodeURIComponent(name));
const log = document.getElementById("log");
const status = document.getElementById("status");
function show(text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  log.appendChild(p);
  log.scrollTop = log.scrollHeight;
}
ws.onopen = () => { status.textContent = "connected"; };
ws.onclose = (e) => { status.textContent = "disconnected (" + e.code + ")"; };
ws.onmessage = (e) => {
  const event = JSON.parse(e.data);
  if (event.type === "message") show(event.name + ": " + event.text);
  else show(event.name + (event.type === "join" ? " joined" : " left") +
            " (" + event.present + " here)", "notice");
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("text");
  if (input.value.trim() && ws.readyState === WebSocket.OPEN) ws.send(input.value);
  input.value = "";
};
</script>
</html>
"""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The page at ``/``; 404 elsewhere (the WebSocket requests never get here)."""
    if environ.get("PATH_INFO", "/") != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not Found\n"]
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))],
    )
    return [PAGE]
