"""The demo: chat rooms served on one port, an HTML page over HTTP and the WebSocket
beside it.

Run it and open http://127.0.0.1:8000/ in two browser tabs (``/?room=kitchen`` for
another room)::

    geventws serve geventws.examples.chat:handle --wsgi geventws.examples.chat:app

The same code runs unchanged on several processes sharing a Redis server; people on
different workers chat together::

    geventws serve geventws.examples.chat:handle --wsgi geventws.examples.chat:app \\
        --workers 4 --broker redis://127.0.0.1:6379/0

``app`` is a plain WSGI application (the page, ``chat.html`` beside this module);
``handle`` is the WebSocket handler. A room is a topic, ``"room:" + name``: the
handler subscribes its connection to it and publishes what the participant says with
:meth:`connection.publish <geventws.Connection.publish>`, which reaches the other
subscribers in every process through the broker (see the documentation's "Topics and
brokers" page).

The protocol: the page connects to ``/chat?room=ROOM&name=NAME`` (both optional: the
room defaults to ``lobby``, a missing name gets a ``guest-NNNN`` one) and sends plain
text messages. The server sends JSON:

* ``{"type": "welcome", "id", "name", "room", "pid"}`` once, to the new participant
  only, once subscribed: its own id (to recognise its own messages), the name and
  room as the server cleaned them up, and the id of the process serving it;
* ``{"type": "message", "id", "name", "text"}`` for each message, to everyone in the
  room, the sender included;
* ``{"type": "join" | "leave", "id", "name"}`` to the others when someone comes or goes;
* ``{"type": "notice", "text"}`` when the broker can't be reached: the room then only
  spans this process until it is back.

Why no "N people here": the number of people in a room is state shared by every
process, and topics carry messages, not state. A per-process set counts only the
people on one worker; a count kept in Redis would go wrong whenever a worker dies
without decrementing it (it would need per-worker leases and a cleanup, more than a
demo should carry). Join and leave notices are honest in every deployment: each is
published by the process that served the connection, and reaches everyone in the
room like a message, with the same at-most-once guarantee across processes.

Names are not identities: two people may pick the same one, and guest names are random
(a per-process counter would hand out ``guest-1`` on every worker). The ``id`` in each
event tells one's own messages apart. Names and texts are untrusted: the page only
ever puts them in the document as text.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from importlib import resources
from typing import Any, Callable, Iterable

import geventws
from geventws.pubsub import BrokerUnavailable

DEFAULT_ROOM = "lobby"
MAX_NAME = 32
MAX_ROOM = 32
MAX_TEXT = 2000
_NOT_IN_ROOM_NAMES = re.compile(r"[^\w-]+")

#: The page, read once at import.
PAGE = resources.files("geventws.examples").joinpath("chat.html").read_bytes()


def room_of(request: geventws.Request) -> str:
    """The room asked for in ``?room=``, lower case, runs of anything but letters,
    digits, ``_`` and ``-`` turned into one ``-``, at most :data:`MAX_ROOM` characters;
    :data:`DEFAULT_ROOM` when nothing is left."""
    wanted = (request.args.get("room") or "").strip().lower()
    room = _NOT_IN_ROOM_NAMES.sub("-", wanted).strip("-")[:MAX_ROOM].strip("-")
    return room or DEFAULT_ROOM


def name_of(request: geventws.Request) -> str:
    """The name asked for in ``?name=``, without control or format characters, spaces
    collapsed, at most :data:`MAX_NAME` characters; a random ``guest-NNNN`` otherwise."""
    wanted = "".join(c for c in request.args.get("name") or "" if c.isprintable())
    name = " ".join(wanted.split())[:MAX_NAME].strip()
    return name or f"guest-{1000 + secrets.randbelow(9000)}"


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def handle(connection: geventws.Connection, request: geventws.Request) -> None:
    """One participant: join the room's topic, relay each text message to the room
    (the sender gets it back too), announce the leave when the connection ends."""
    room = room_of(request)
    name = name_of(request)
    topic = "room:" + room
    me = secrets.token_hex(6)
    connection.accept()
    try:
        connection.subscribe(topic)
        reachable = True
    except BrokerUnavailable:
        reachable = False  # kept: local messages flow now, the rest once the broker is back
    connection.send(_event("welcome", id=me, name=name, room=room, pid=os.getpid()))
    if not reachable:
        connection.send(
            _event("notice", text="Only people on this server process can hear you for now.")
        )
    try:
        connection.publish(topic, _event("join", id=me, name=name))
        for message in connection:
            if not isinstance(message, str):
                continue  # the page sends text only
            text = message.strip()[:MAX_TEXT]
            if text:
                said = _event("message", id=me, name=name, text=text)
                connection.publish(topic, said)
                connection.send(said)
    finally:
        connection.publish(topic, _event("leave", id=me, name=name))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The page at ``/`` (whatever the query string); 404 elsewhere (the WebSocket
    requests never get here)."""
    if environ.get("PATH_INFO", "/") != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not Found\n"]
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(PAGE))),
            ("Cache-Control", "no-cache"),
        ],
    )
    return [PAGE]
