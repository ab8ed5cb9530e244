"""The examples and the demo, run the way their docs say, against independent clients:
websockets' client, a real redis-server behind ``--workers 2``, and headless Chromium
driven over the DevTools protocol for what a person sees (tests/browser.py)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlencode

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from geventws.examples import ticker

from .browser import Tab, chromium, devtools_tabs, open_tab
from .redis_server import RedisServer, redis_servers
from .test_wsgi import pywsgi
from .utils import ThrowawayCA, start_serve_command, wait_for


def test_ticker_pushes_to_every_client(serve: Any) -> None:
    server = serve(ticker.handle)
    with connect(server.url) as first, connect(server.url) as second:
        assert wait_for(lambda: len(server.server.connections) == 2)
        server.call(lambda: ticker.tick(server.server, interval=0.01, count=3))
        for ws in (first, second):
            ticks = [json.loads(ws.recv(timeout=10))["tick"] for _ in range(3)]
            assert ticks == [1, 2, 3]


# -- the chat demo ---------------------------------------------------------------------

CHAT = ["geventws.examples.chat:handle", "--wsgi", "geventws.examples.chat:app"]


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The demo as the README starts it, on a free port."""
    log = tmp_path / "chat.log"
    process, port = start_serve_command(CHAT, log)
    try:
        yield process, port, log
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def assert_clean(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text


class Chatter:
    """A participant with websockets' client: the welcome, then the room's events."""

    def __init__(self, port: int, room: Optional[str] = None, name: Optional[str] = None) -> None:
        query = urlencode({k: v for k, v in (("room", room), ("name", name)) if v is not None})
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}/chat?{query}", open_timeout=10)
        )
        self.welcome: dict[str, Any] = self.next()
        assert self.welcome["type"] == "welcome", self.welcome
        self.seen: list[dict[str, Any]] = []

    @property
    def id(self) -> str:
        return str(self.welcome["id"])

    def next(self) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=20))  # type: ignore[no-any-return]

    def until(self, **fields: Any) -> dict[str, Any]:
        """Receive (each event within 20 s) until one has all of ``fields``; all the
        events received are kept in :attr:`seen`."""
        while True:
            event = self.next()
            self.seen.append(event)
            if all(event.get(key) == value for key, value in fields.items()):
                return event

    def close(self) -> None:
        self._stack.close()


def test_chat_demo_serves_the_page(chat_server: Any) -> None:
    _, port, log = chat_server
    page = requests.get(f"http://127.0.0.1:{port}/?room=kitchen", timeout=10)
    assert page.status_code == 200 and "geventws chat" in page.text
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
    # Untrusted names and texts go in as text only (the browser test checks it too).
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", page.text)
    assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=10).status_code == 404
    assert_clean(log)


def test_chat_demo_rooms_names_and_notices(chat_server: Any) -> None:
    """Two people in a room chat (each gets their own message back, marked with their
    id); another room hears nothing; names and rooms are cleaned up; SIGTERM closes
    everyone with 1001.

    Absence without waiting on silence: the server is one process, so a publish
    delivers to every local subscriber before it returns, and the sender gets its echo
    after that. Once the kitchen message reached anyone, any copy for the lobby
    would already be queued on the lobby connection, ahead of the lobby's marker sent
    afterwards."""
    process, port, log = chat_server
    ann = Chatter(port, room="kitchen", name="ann")
    assert ann.welcome == {
        "type": "welcome",
        "id": ann.id,
        "name": "ann",
        "room": "kitchen",
        "pid": process.pid,
    }
    lou = Chatter(port)  # no room, no name
    assert lou.welcome["room"] == "lobby"
    assert re.fullmatch(r"guest-\d{4}", lou.welcome["name"]), lou.welcome
    bob = Chatter(port, room="  Kitchen ", name="bob")
    assert bob.welcome["room"] == "kitchen" and bob.id != ann.id
    assert ann.until(type="join") == {"type": "join", "id": bob.id, "name": "bob"}

    ann.ws.send(b"binary is ignored")
    ann.ws.send("   ")  # and so is blank text
    ann.ws.send("  hello bob  ")
    said = {"type": "message", "id": ann.id, "name": "ann", "text": "hello bob"}
    assert bob.next() == said
    assert ann.next() == said  # the sender's own copy: the page marks it as its own
    bob.ws.send("hi ann")
    assert ann.next() == {"type": "message", "id": bob.id, "name": "bob", "text": "hi ann"}

    dan = Chatter(port, room="lobby", name="dan")
    dan.ws.send("marker")
    assert lou.until(text="marker")["name"] == "dan"
    assert [event["type"] for event in lou.seen] == ["join", "message"], lou.seen

    bob.close()
    assert ann.until(type="leave") == {"type": "leave", "id": bob.id, "name": "bob"}

    # Untrusted names are cleaned of control and format characters, not escaped (the
    # page puts them in as text); long names and rooms are cut.
    odd = Chatter(port, room="My Kitchen, 2nd floor!" + "x" * 40, name="\u202e<b>eve</b>\n\t " * 9)
    assert odd.welcome["name"] == ("<b>eve</b> " * 9)[:32].strip()
    assert odd.welcome["room"] == ("my-kitchen-2nd-floor-" + "x" * 40)[:32]

    # SIGTERM: 1001 to everyone, exit 0.
    process.send_signal(signal.SIGTERM)
    for chatter in (ann, lou, dan, odd):
        with pytest.raises(ConnectionClosed):
            while True:
                chatter.next()
        assert chatter.ws.close_code == 1001
    assert process.wait(timeout=30) == 0
    assert_clean(log)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    yield from redis_servers(tmp_path)


def test_chat_demo_two_workers_chat_through_redis(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """The README's command with ``--workers 2 --broker``, unchanged: people served by
    different worker processes (told apart by the pid in their welcome) see each
    other's messages and join notices."""
    redis = redis_server()
    log = tmp_path / "workers.log"
    process, port = start_serve_command([*CHAT, "--workers", "2", "--broker", redis.url], log)
    chatters: list[Chatter] = []
    try:
        page = requests.get(f"http://127.0.0.1:{port}/?room=kitchen", timeout=10)
        assert page.status_code == 200 and "geventws chat" in page.text
        by_pid: dict[int, Chatter] = {}
        for n in range(200):  # the kernel spreads connections over the workers
            chatter = Chatter(port, room="kitchen", name=f"person-{n}")
            chatters.append(chatter)
            by_pid.setdefault(chatter.welcome["pid"], chatter)
            if len(by_pid) == 2:
                break
        assert len(by_pid) == 2, "connections never reached both workers"
        assert process.pid not in by_pid  # the supervisor serves nobody
        first, second = by_pid.values()
        name = second.welcome["name"]
        assert first.until(type="join", id=second.id)["name"] == name
        first.ws.send("across workers")
        event = second.until(type="message", id=first.id)
        assert event["text"] == "across workers" and event["name"] == first.welcome["name"]
        second.ws.send("and back")
        assert first.until(type="message", id=second.id)["text"] == "and back"
        for chatter in chatters:
            chatter.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        for chatter in chatters:
            chatter.close()
        stop(process)
    assert_clean(log)
    assert "no broker" not in log.read_text()


# -- the chat page in a real browser ----------------------------------------------------

LOG = "document.getElementById('log')"
ME = "document.getElementById('me').textContent"
STATE = "document.body.dataset.state"


def say_in_page(tab: Tab, text: str) -> None:
    """Tap the message field, type, tap Send: what a person does."""
    tab.click_element("#text")
    assert tab.evaluate("document.activeElement.id") == "text"
    tab.type_text(text)
    tab.click_element("#send")


def messages(tab: Tab) -> list[dict[str, Any]]:
    """The messages shown in the page: who, what, and whether marked as one's own."""
    return tab.evaluate(  # type: ignore[no-any-return]
        f"[...{LOG}.querySelectorAll('.msg')].map(p => ({{"
        "who: p.querySelector('.who').textContent, text: p.querySelector('.text').textContent,"
        "mine: p.classList.contains('mine')}))"
    )


def wait_for_message(tab: Tab, text: str) -> dict[str, Any]:
    found = (
        f"[...{LOG}.querySelectorAll('.msg .text')].some(e => e.textContent === {json.dumps(text)})"
    )
    assert tab.wait_for(found), messages(tab)
    (message,) = [m for m in messages(tab) if m["text"] == text]
    return message


def test_chat_page_rooms_names_and_escaping(chat_server: Any, tmp_path: Path) -> None:
    """Three tabs of one browser: ann in the kitchen, a guest in the kitchen, a guest in
    the lobby. The names show in the header, messages cross between the kitchen tabs
    (one's own marked), untrusted names and texts stay text, the lobby hears nothing
    from the kitchen (see the ordering argument of the websocket test), and a chosen
    name is remembered by new tabs."""
    _, port, log = chat_server
    base = f"http://127.0.0.1:{port}/"
    profile = tmp_path / "profile"
    with chromium(base + "?room=kitchen&name=ann", profile, devtools=True):
        tabs = devtools_tabs(profile, base + "?room=kitchen", base)
        try:
            ann, guest, lobby = tabs
            for tab in tabs:
                assert tab.wait_for(f"{STATE} === 'connected'"), tab.evaluate(STATE)
                assert tab.evaluate("document.getElementById('status').textContent") == "connected"
            assert ann.evaluate(ME) == "ann"
            guest_name = guest.evaluate(ME)
            assert re.fullmatch(r"guest-\d{4}", guest_name), guest_name
            assert re.fullmatch(r"guest-\d{4}", lobby.evaluate(ME))
            room = "document.getElementById('room').textContent"
            assert [tab.evaluate(room) for tab in tabs] == ["kitchen", "kitchen", "lobby"]

            say_in_page(ann, "hello from ann")
            assert wait_for_message(guest, "hello from ann") == {
                "who": "ann", "text": "hello from ann", "mine": False
            }  # fmt: skip
            assert wait_for_message(ann, "hello from ann") == {
                "who": "ann (you)", "text": "hello from ann", "mine": True
            }  # fmt: skip

            evil = "<img src=x onerror=title=1>"
            eve = Chatter(port, room="kitchen", name=evil)
            eve.ws.send("<script>document.title='pwned'</script><b>bold</b>")
            shown = wait_for_message(guest, "<script>document.title='pwned'</script><b>bold</b>")
            assert shown["who"] == evil
            tags = f"[...{LOG}.querySelectorAll('*')].map(e => e.tagName)"
            assert set(guest.evaluate(tags)) == {"P", "SPAN"}
            assert guest.evaluate("document.title") == "#kitchen · geventws chat"
            assert guest.wait_for(f"{LOG}.textContent.includes({json.dumps(evil + ' joined')})")
            eve.close()

            lou = Chatter(port, name="lou")
            lou.ws.send("lobby marker")
            wait_for_message(lobby, "lobby marker")
            assert [m["text"] for m in messages(lobby)] == ["lobby marker"]
            lou.close()

            # The guest picks a name: shown, announced, remembered by a new tab.
            guest.click_element("summary")
            guest.click_element("#new-name")
            guest.evaluate("document.getElementById('new-name').select()")
            guest.type_text("bob")
            guest.click_element("#settings button")
            assert guest.wait_for(f"{STATE} === 'connected' && {ME} === 'bob'"), guest.evaluate(ME)
            assert guest.evaluate("location.search") == "?room=kitchen"
            assert guest.evaluate("localStorage.getItem('geventws-chat-name')") == "bob"
            assert ann.wait_for(f"{LOG}.textContent.includes('bob joined')")
            assert ann.wait_for(f"{LOG}.textContent.includes({json.dumps(guest_name + ' left')})")
            tabs.append(open_tab(profile, base + "?room=kitchen"))
            assert tabs[-1].wait_for(f"{STATE} === 'connected' && {ME} === 'bob'")
        finally:
            for tab in tabs:
                tab.close()
    assert_clean(log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_chat_on(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The demo on a given port (to restart it on the same one); returns once it
    listens."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "geventws", "serve", *CHAT, "--port", str(port)],
            stderr=output,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if (
        not wait_for(
            lambda: (
                f"listening on ws://127.0.0.1:{port} " in log.read_text()
                or process.poll() is not None
            ),
            timeout=30,
        )
        or process.poll() is not None
    ):
        stop(process)
        raise RuntimeError(f"geventws serve did not start: {log.read_text()}")
    return process


def test_chat_page_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    """The server stops (SIGTERM: 1001) and comes back on the same port: the page shows
    "reconnecting…" while it retries with growing delays, then rejoins by itself, with
    the same (assigned) name and room, and the retry count starts over. Screenshot:
    ``reconnecting.png`` in the test's tmp_path."""
    port = free_port()
    first = serve_chat_on(port, tmp_path / "first.log")
    second: Optional[subprocess.Popen[bytes]] = None
    profile = tmp_path / "profile"
    try:
        with chromium(f"http://127.0.0.1:{port}/?room=kitchen", profile, devtools=True):
            (tab,) = devtools_tabs(profile)
            try:
                assert tab.wait_for(f"{STATE} === 'connected'")
                name = tab.evaluate(ME)
                assert re.fullmatch(r"guest-\d{4}", name), name

                # The delays: exponential from 0.5 s, capped at 15 s, a random half of each.
                for attempt, delay in enumerate(tab.evaluate("[...Array(40).keys()].map(backoff)")):
                    ceiling = min(15000, 500 * 2**attempt)
                    assert ceiling / 2 <= delay <= ceiling, (attempt, delay)

                first.send_signal(signal.SIGTERM)
                assert first.wait(timeout=30) == 0
                assert tab.wait_for(f"{STATE} === 'reconnecting'")
                status = tab.evaluate("document.getElementById('status').textContent")
                assert status.startswith("reconnecting…"), status
                assert tab.evaluate("document.getElementById('send').disabled") is True
                # Retries against a closed port fail, and it keeps trying.
                assert tab.wait_for("Number(document.body.dataset.attempt) >= 3")
                assert tab.evaluate(STATE) == "reconnecting"
                tab.screenshot(tmp_path / "reconnecting.png")

                second = serve_chat_on(port, tmp_path / "second.log")
                assert tab.wait_for(f"{STATE} === 'connected'")
                assert tab.evaluate("document.body.dataset.attempt") == "0"
                assert tab.evaluate(ME) == name
                assert tab.evaluate(f"{LOG}.textContent.includes('reconnected')")
                # Server side: the same name, in the same room, both ways.
                watcher = Chatter(port, room="kitchen", name="watcher")
                say_in_page(tab, "back again")
                event = watcher.until(type="message")
                assert (event["name"], event["text"]) == (name, "back again")
                watcher.ws.send("welcome back")
                assert wait_for_message(tab, "welcome back")["who"] == "watcher"
                watcher.close()
            finally:
                tab.close()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert_clean(tmp_path / "first.log")
    assert_clean(tmp_path / "second.log")


LAYOUT = """(() => {
  const visible = (selector) => {
    const element = document.querySelector(selector);
    const r = element.getBoundingClientRect();
    const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
    return {width: r.width, height: r.height, inside: r.left >= 0 && r.top >= 0 &&
            r.right <= window.innerWidth && r.bottom <= window.innerHeight,
            reachable: element === hit || element.contains(hit)};
  };
  return {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    logScrollWidth: document.getElementById("log").scrollWidth,
    logClientWidth: document.getElementById("log").clientWidth,
    header: visible("header"), me: visible("#me"), status: visible("#status"),
    text: visible("#text"), send: visible("#send"),
    textLabel: document.getElementById("text").labels[0].textContent,
  };
})()"""


def check_layout(tab: Tab, width: int) -> None:
    """No horizontal scrolling, of the page or of the messages; the header, the name, the status, the message field and
    Send in view and not covered, Send at least 24x24 CSS pixels (WCAG 2.2, 2.5.8)."""
    layout = tab.evaluate(LAYOUT)
    assert layout["innerWidth"] == width, layout  # the viewport meta tag took effect
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["bodyScrollWidth"] <= layout["innerWidth"], layout
    assert layout["logScrollWidth"] <= layout["logClientWidth"], layout  # nor inside the log
    for part in ("header", "me", "status", "text", "send"):
        box = layout[part]
        assert box["width"] > 0 and box["height"] > 0 and box["inside"], (part, layout)
        assert box["reachable"], (part, layout)
    assert layout["send"]["width"] >= 24 and layout["send"]["height"] >= 24, layout
    assert layout["textLabel"] == "Message"


def test_chat_page_fits_a_phone_and_a_desktop(chat_server: Any, tmp_path: Path) -> None:
    """At 375x740 as a phone, and at 1280x800: no horizontal scrolling even with a long
    unbroken message and a long name, the header and the message field visible, and a
    message typed and sent with taps arrives. Screenshots: ``phone.png``,
    ``phone-settings.png``, ``desktop.png`` in the test's tmp_path."""
    _, port, log = chat_server
    profile = tmp_path / "profile"
    with chromium("about:blank", profile, devtools=True):
        (tab,) = devtools_tabs(profile)
        try:
            tab.emulate(375, 740, mobile=True, scale=2)
            tab.navigate(f"http://127.0.0.1:{port}/?room=kitchen&name=ann")
            assert tab.wait_for(f"{STATE} === 'connected'")
            other = Chatter(port, room="kitchen", name="Bartholomew, the one with the long name")
            other.ws.send("How is the kitchen? " * 4)
            other.ws.send("x" * 300)
            wait_for_message(tab, "x" * 300)
            say_in_page(tab, "typed on a phone")
            assert other.until(type="message", name="ann")["text"] == "typed on a phone"
            wait_for_message(tab, "typed on a phone")
            check_layout(tab, 375)
            tab.screenshot(tmp_path / "phone.png")

            tab.click_element("summary")
            assert tab.evaluate("document.querySelector('details').open") is True
            check_layout(tab, 375)
            tab.screenshot(tmp_path / "phone-settings.png")
            tab.click_element("summary")

            tab.emulate(1280, 800)
            assert tab.wait_for("window.innerWidth === 1280")
            check_layout(tab, 1280)
            tab.screenshot(tmp_path / "desktop.png")
            other.close()
        finally:
            tab.close()
    for name in ("phone.png", "phone-settings.png", "desktop.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert_clean(log)


# -- Flask -----------------------------------------------------------------------------


def test_flask_pages_and_websocket_share_the_session(serve: Any) -> None:
    from geventws.examples import flask_app

    server = pywsgi(serve, flask_app.app)
    base = server.http_url
    with requests.Session() as session:
        assert "Log in" in session.get(base + "/", timeout=10).text
        with pytest.raises(InvalidStatus) as info:
            connect(server.url + "/ws", open_timeout=10)
        assert info.value.response.status_code == 401
        login = session.post(base + "/login", data={"name": "ann"}, allow_redirects=False)
        assert login.status_code == 302
        assert "Logged in as <b>ann</b>" in session.get(base + "/", timeout=10).text
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        with connect(server.url + "/ws", additional_headers={"Cookie": cookie}) as ws:
            assert ws.recv(timeout=10) == "hello ann"
            # A Flask page on the same port while the WebSocket is open.
            assert "ann" in session.get(base + "/", timeout=10).text
            ws.send("note")
            assert ws.recv(timeout=10) == "ann: note"
    del login
    gc.collect()  # requests keeps the POST's socket until collected; the leak check counts fds


def test_cli_wsgi_over_tls(tmp_path: Path) -> None:
    """``--wsgi`` with ``--certfile``: the page over HTTPS and the WebSocket over wss://
    on one port, verified against a test CA."""
    tls = ThrowawayCA("127.0.0.1")
    tls.cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "s.pem")
    process, port = start_serve_command(
        [
            "geventws.examples.chat:handle",
            "--wsgi",
            "geventws.examples.chat:app",
            "--certfile",
            str(tmp_path / "s.pem"),
        ],
        tmp_path / "tls.log",
    )
    try:
        with requests.Session() as session:
            tls.ca.cert_pem.write_to_path(tmp_path / "ca.pem")
            page = session.get(f"https://127.0.0.1:{port}/", verify=str(tmp_path / "ca.pem"))
            assert page.status_code == 200 and "geventws chat" in page.text
        with connect(f"wss://127.0.0.1:{port}/chat?name=tls", ssl=tls.client_context) as ws:
            assert json.loads(ws.recv(timeout=10))["name"] == "tls"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
