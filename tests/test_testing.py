"""``geventws.testing.TestClient``: a handler in-process, the blocking client API.

Everything runs on the test's own gevent hub (no thread, no port, no monkey-patching):
handlers report through plain lists, and waits go through gevent. Every test is checked
for leaked descriptors and greenlets (the autouse fixture below).
"""

from __future__ import annotations

import gc
import json
import logging
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import gevent.event
import greenlet
import pytest

from geventws import (
    Connection,
    ConnectionClosedError,
    InvalidHandshake,
    InvalidResponse,
    InvalidURI,
    Request,
)
from geventws.examples import chat
from geventws.examples.echo import handle as echo
from geventws.pubsub import LocalBroker
from geventws.testing import TestClient

from .redis_server import RedisServer, redis_servers
from .utils import fd_count, wait_in_hub

# -- leak checks ---------------------------------------------------------------------------


def hub_greenlets() -> list[Any]:
    """The live greenlets of this thread's hub (raw greenlets too)."""
    hub = gevent.get_hub()
    return [
        g
        for g in gc.get_objects()
        if type(g) is not weakref.ProxyType  # isinstance() on a dead proxy raises
        and isinstance(g, greenlet.greenlet)
        and g.parent is hub
        and not g.dead
    ]


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Each test ends with the descriptors and hub greenlets it started with."""
    gevent.sleep(0)  # the hub and its loop exist before counting
    before_fds = fd_count()
    before = hub_greenlets()
    known = {id(g) for g in before}
    yield

    def new_greenlets() -> list[Any]:
        return [g for g in hub_greenlets() if id(g) not in known]

    assert wait_in_hub(lambda: not new_greenlets()), f"greenlets left: {new_greenlets()}"
    assert wait_in_hub(lambda: fd_count() <= before_fds), (
        f"file descriptors leaked: {before_fds} -> {fd_count()}"
    )
    del before


# -- the basics ----------------------------------------------------------------------------


def test_testclient_echo_in_a_plain_test() -> None:
    client = TestClient(echo)
    with client.connect() as ws:
        ws.send("héllo")
        assert ws.receive(timeout=5) == "héllo"
        ws.send(b"\x00\xff", binary=True)
        assert ws.receive(timeout=5) == b"\x00\xff"
        ws.send(["frag", "ment"])
        assert ws.receive(timeout=5) == "fragment"
        big = bytes(range(256)) * 4000
        ws.send(big, binary=True)
        assert ws.receive(timeout=5) == big
        assert ws.ping().get(timeout=5) >= 0
    assert ws.close_code == 1000
    assert client.connections == set()


def test_testclient_request_carries_path_headers_and_options() -> None:
    seen: list[Request] = []

    def handler(connection: Connection, request: Request) -> None:
        seen.append(request)
        connection.accept(headers={"X-Server": "yes"})
        connection.send(str(connection.subprotocol))

    client = TestClient(handler, subprotocols=["chat"])
    with client.connect(
        "/room%201?x=1&x=2",
        headers={"Cookie": "session=abc", "X-Token": "t"},
        origin="https://example.com",
        subprotocols=["other", "chat"],
    ) as ws:
        assert ws.receive(timeout=5) == "chat"
        assert ws.subprotocol == "chat"
        assert ws.response_headers is not None and ws.response_headers["X-Server"] == "yes"
    (request,) = seen
    assert request.path == "/room 1"
    assert request.args.getlist("x") == ["1", "2"]
    assert request.cookies == {"session": "abc"}
    assert request.headers["x-token"] == "t"
    assert request.origin == "https://example.com"
    assert request.host == "testserver"
    assert request.subprotocols == ["other", "chat"]
    assert request.remote_address == ("127.0.0.1", 50000)
    assert request.scheme == "ws"


def test_testclient_connects_to_a_ws_uri_with_its_host() -> None:
    hosts: list[str] = []

    def handler(connection: Connection, request: Request) -> None:
        hosts.append(str(request.host))

    client = TestClient(handler)
    with client.connect("ws://example.com:8080/chat"):
        pass
    assert hosts == ["example.com:8080"]
    with pytest.raises(ValueError, match="TLS"):
        client.connect("wss://example.com/")
    with pytest.raises(InvalidURI):
        client.connect("http://example.com/")


def test_testclient_refuses_unknown_options_as_the_real_apis_do() -> None:
    with pytest.raises(
        TypeError, match=r"TestClient\(\) got an unexpected keyword argument 'max_sise'"
    ):
        TestClient(echo, max_sise=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="TLS"):
        TestClient(echo, ssl_context=object())  # type: ignore[arg-type]
    client = TestClient(echo)
    with pytest.raises(
        TypeError, match=r"connect\(\) got an unexpected keyword argument 'origins'"
    ):
        client.connect("/", origins=["https://example.com"])  # type: ignore[call-arg]


def test_testclient_server_connections_are_tracked_while_handlers_run() -> None:
    client = TestClient(echo)
    with client.connect() as a, client.connect() as b:
        a.send("x")
        b.send("y")
        assert (a.receive(timeout=5), b.receive(timeout=5)) == ("x", "y")
        assert len(client.connections) == 2
        assert all(c.request is not None for c in client.connections)
    assert client.connections == set()


# -- rejects, origins, limits, proxies ---------------------------------------------------


def test_testclient_reject_raises_invalid_response_with_status_headers_and_body() -> None:
    def handler(connection: Connection, request: Request) -> None:
        if request.cookies.get("session") != "abc":
            return connection.reject(403, "log in first\n", {"X-Why": "session"})
        connection.send("welcome")
        return None

    client = TestClient(handler)
    with pytest.raises(InvalidResponse) as info:
        client.connect("/")
    assert info.value.status == 403
    assert info.value.headers is not None and info.value.headers["X-Why"] == "session"
    assert info.value.body == b"log in first\n"
    with client.connect("/", headers={"Cookie": "session=abc"}) as ws:
        assert ws.receive(timeout=5) == "welcome"


def test_testclient_origins_option_refuses_with_403_before_the_handler() -> None:
    calls: list[str] = []

    def handler(connection: Connection, request: Request) -> None:
        calls.append(str(request.origin))

    client = TestClient(handler, origins=["https://a.example"])
    with pytest.raises(InvalidResponse) as info:
        client.connect("/", origin="https://b.example")
    assert info.value.status == 403
    with client.connect("/", origin="https://a.example"):
        pass
    assert calls == ["https://a.example"]


def test_testclient_max_connections_answers_503() -> None:
    client = TestClient(echo, max_connections=1)
    with client.connect() as ws:
        with pytest.raises(InvalidResponse) as info:
            client.connect()
        assert info.value.status == 503
        assert info.value.headers is not None and info.value.headers["Retry-After"] == "5"
        ws.send("still served")
        assert ws.receive(timeout=5) == "still served"
    with client.connect() as ws:  # a free slot again
        ws.send("x")
        assert ws.receive(timeout=5) == "x"


def test_testclient_proxy_headers_apply_to_its_remote_address() -> None:
    addresses: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        addresses.append((request.remote_address, request.scheme))

    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with TestClient(handler) as client, client.connect("/", headers=forwarded):
        pass
    with TestClient(handler, remote_address=("192.0.2.1", 4000)) as client:
        with client.connect("/", headers=forwarded):
            pass
    assert addresses == [(("203.0.113.7", 0), "wss"), (("192.0.2.1", 4000), "ws")]


def test_testclient_follows_redirects_and_drops_credentials_across_origins() -> None:
    seen: list[tuple[str, str, Any]] = []

    def handler(connection: Connection, request: Request) -> None:
        seen.append((str(request.host), request.path, request.cookies.get("session")))
        if request.path == "/old":
            return connection.reject(301, headers={"Location": "/new"})
        if request.path == "/away":
            return connection.reject(302, headers={"Location": "ws://other.example/landing"})
        connection.send(request.path)
        return None

    client = TestClient(handler)
    cookie = {"Cookie": "session=abc"}
    with client.connect("/old", headers=cookie) as ws:
        assert ws.receive(timeout=5) == "/new"
    with client.connect("/away", headers=cookie) as ws:
        assert ws.receive(timeout=5) == "/landing"
    assert seen == [
        ("testserver", "/old", "abc"),
        ("testserver", "/new", "abc"),
        ("testserver", "/away", "abc"),
        ("other.example", "/landing", None),
    ]
    with pytest.raises(InvalidHandshake, match="too many redirects"):
        client.connect("/old", max_redirects=0)


# -- subprotocols and compression -----------------------------------------------------------


def test_testclient_subprotocol_follows_the_server_preference() -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        connection.send(str(connection.subprotocol))

    client = TestClient(handler, subprotocols=["v2", "v1"])
    with client.connect(subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2" and ws.receive(timeout=5) == "v2"
    with client.connect(subprotocols=["other"]) as ws:
        assert ws.subprotocol is None and ws.receive(timeout=5) == "None"


@pytest.mark.parametrize(
    ("server", "client_side", "negotiated"),
    [("deflate", "deflate", True), (None, "deflate", False), ("deflate", None, False)],
)
def test_testclient_negotiates_compression_as_a_real_client(
    server: Any, client_side: Any, negotiated: bool
) -> None:
    extensions: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        extensions.append(connection.extensions)
        for message in connection:
            connection.send(message)

    client = TestClient(handler, compression=server)
    with client.connect(compression=client_side) as ws:
        text = "compressible " * 10000
        ws.send(text)
        assert ws.receive(timeout=5) == text
        assert ws.extensions == extensions[0]
    if negotiated:
        assert ws.extensions is not None and ws.extensions.startswith("permessage-deflate")
    else:
        assert ws.extensions is None


# -- topics --------------------------------------------------------------------------------


def room(connection: Connection, request: Request) -> None:
    """Subscribe to the room named in the query; publish every message to the others."""
    topic = request.args.get("room", "lobby")
    connection.subscribe(topic)
    connection.send("joined")
    for message in connection:
        connection.publish(topic, message)


def test_testclient_topics_two_clients_chat_and_the_test_publishes() -> None:
    with TestClient(room) as client:
        with client.connect("/?room=r1") as ann, client.connect("/?room=r1") as bob:
            assert ann.receive(timeout=5) == "joined" and bob.receive(timeout=5) == "joined"
            assert client.topics.topics == {"r1"}
            assert len(client.topics.subscribers("r1")) == 2
            ann.send("hi bob")
            assert bob.receive(timeout=5) == "hi bob"
            bob.send("hi ann")
            assert ann.receive(timeout=5) == "hi ann"
            assert client.publish("r1", "from the test") == 2
            assert client.publish("elsewhere", "nobody") == 0
            assert ann.receive(timeout=5) == "from the test"
            assert bob.receive(timeout=5) == "from the test"
            with pytest.raises(TimeoutError):
                ann.receive(timeout=0.05)  # not her own message, not "nobody"
        assert client.topics.topics == frozenset()  # connections leave their topics


def test_testclient_broker_is_local_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEVENTWS_BROKER", "redis://127.0.0.1:1/0")
    with TestClient(room) as client:
        assert isinstance(client.topics.broker, LocalBroker)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    yield from redis_servers(tmp_path)


def test_testclient_topics_through_a_real_redis(redis_server: Callable[..., RedisServer]) -> None:
    """Two TestClients sharing a Redis broker are two servers: a message published on
    one reaches the subscribers of the other, once."""
    redis = redis_server()
    with (
        TestClient(room, broker=redis.url) as one,
        TestClient(room, broker=redis.url) as two,
    ):
        with one.connect("/?room=r") as ann, two.connect("/?room=r") as bob:
            assert ann.receive(timeout=10) == "joined" and bob.receive(timeout=10) == "joined"
            ann.send("across")
            assert bob.receive(timeout=10) == "across"
            two.publish("r", "from two")
            assert ann.receive(timeout=10) == "from two"
            assert bob.receive(timeout=10) == "from two"
            with pytest.raises(TimeoutError):
                ann.receive(timeout=0.2)  # delivered once, not echoed through Redis
        assert one.topics.broker.healthy


# -- handler exceptions ---------------------------------------------------------------------


def failing(connection: Connection, request: Request) -> None:
    if request.path == "/early":
        raise ValueError("broken before accept")
    connection.receive()
    raise RuntimeError("boom")


def test_testclient_handler_exception_is_logged_and_closes_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = TestClient(failing)
    with caplog.at_level(logging.ERROR, logger="geventws.server"):
        with client.connect() as ws:
            ws.send("trigger")
            with pytest.raises(ConnectionClosedError) as info:
                ws.receive(timeout=5)
            assert info.value.code == 1011
        with pytest.raises(InvalidResponse) as rejected:
            client.connect("/early")
        assert rejected.value.status == 500
    errors = [r for r in caplog.records if "handler failed" in r.message]
    assert [type(r.exc_info[1]) for r in errors if r.exc_info] == [RuntimeError, ValueError]
    client.close()  # without the opt-in, nothing is raised in the test


def test_testclient_raise_server_exceptions_at_the_end_of_the_with_block() -> None:
    client = TestClient(failing, raise_server_exceptions=True)
    with pytest.raises(RuntimeError, match="boom") as info:
        with client.connect() as ws:
            ws.send("trigger")
            ws.receive(timeout=5)  # raises ConnectionClosedError (1011) first
    assert isinstance(info.value.__context__, ConnectionClosedError)
    assert info.value.__context__.code == 1011
    assert ws.close_code == 1011
    ws.close()  # raised once
    client.close()


def test_testclient_raise_server_exceptions_from_close() -> None:
    client = TestClient(failing, raise_server_exceptions=True)
    ws = client.connect()
    ws.send("trigger")
    with pytest.raises(RuntimeError, match="boom"):
        ws.close()
    client.close()  # raised once


def test_testclient_raise_server_exceptions_before_the_handshake_from_connect() -> None:
    client = TestClient(failing, raise_server_exceptions=True)
    with pytest.raises(ValueError, match="broken before accept") as info:
        client.connect("/early")
    assert isinstance(info.value.__context__, InvalidResponse)
    assert info.value.__context__.status == 500


def test_testclient_close_raises_what_an_unclosed_connection_left() -> None:
    client = TestClient(failing, raise_server_exceptions=True)
    ws = client.connect()
    ws.send("trigger")
    assert wait_in_hub(lambda: ws.closed)
    with pytest.raises(RuntimeError, match="boom"):
        client.close()
    client.close()  # raised once, and idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.connect()


def test_testclient_closed_connection_is_not_a_handler_failure() -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.receive()
        connection.receive()  # the client closed: ConnectionClosedOK

    client = TestClient(handler, raise_server_exceptions=True)
    with client.connect() as ws:
        ws.send("one")
    client.close()


# -- ending: no cleanup for the user, bounded waits --------------------------------------


def test_testclient_context_manager_closes_what_the_test_left_open() -> None:
    ends: list[Any] = []

    def handler(connection: Connection, request: Request) -> None:
        for _ in connection:
            pass
        ends.append(connection.close_code)

    with TestClient(handler) as client:
        first = client.connect()
        second = client.connect()
        first.send("x")
    assert ends == [1000, 1000]
    assert first.closed and second.closed
    assert client.connections == set()


def test_testclient_handler_that_never_returns_is_killed_after_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck = gevent.event.Event()  # never set

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        stuck.wait()

    client = TestClient(handler, close_timeout=0.2)
    with caplog.at_level(logging.INFO):

        def session() -> None:
            with client.connect() as ws:
                ws.send("nobody reads this")

        done = gevent.spawn(session)
        done.join(timeout=30)
        assert done.ready(), "leaving the with block hung"
        assert done.successful()
    assert ws_closed_lines(caplog) == ["code=1000"]
    assert any("killed" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert client.connections == set()


def ws_closed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """``code=N`` of each access line of an opened connection (``... 101 close=N ...``)."""
    return [
        "code=" + word.partition("=")[2]
        for r in caplog.records
        if r.name == "geventws.access"
        for word in r.getMessage().split()
        if word.startswith("close=")
    ]


def test_testclient_open_timeout_when_the_handler_never_answers() -> None:
    stuck = gevent.event.Event()

    def handler(connection: Connection, request: Request) -> None:
        stuck.wait()  # neither accepts nor rejects

    client = TestClient(handler, close_timeout=0.2)
    with pytest.raises(TimeoutError, match="timed out opening"):
        client.connect("/", open_timeout=0.1)
    assert client.connections == set()


def test_testclient_receive_timeout_leaves_the_connection_usable() -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.send(f"late {connection.receive()}")

    client = TestClient(handler)
    with client.connect() as ws:
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.05)
        ws.send("answer")
        assert ws.receive(timeout=5) == "late answer"


def test_testclient_handler_close_is_seen_by_the_client() -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.send("bye")
        connection.close(4000, "done")

    client = TestClient(handler)
    with client.connect() as ws:
        assert ws.receive(timeout=5) == "bye"
        with pytest.raises(ConnectionClosedError) as info:  # not 1000 or 1001
            ws.receive(timeout=5)
        assert (info.value.code, ws.close_code, ws.close_reason) == (4000, 4000, "done")


# -- as a fixture, with the chat example ----------------------------------------------------


@pytest.fixture
def chat_client() -> Iterator[TestClient]:
    with TestClient(chat.handle) as client:
        yield client


def test_testclient_fixture_two_chatters(chat_client: TestClient) -> None:
    with chat_client.connect("/chat?name=ann") as ann:
        welcome = json.loads(ann.receive(timeout=5))
        assert (welcome["type"], welcome["name"], welcome["room"]) == ("welcome", "ann", "lobby")
        with chat_client.connect("/chat?name=bob") as bob:
            bob_id = json.loads(bob.receive(timeout=5))["id"]
            joined = json.loads(ann.receive(timeout=5))
            assert (joined["type"], joined["name"], joined["id"]) == ("join", "bob", bob_id)
            bob.send("hello ann")
            for ws in (ann, bob):  # the sender gets its own copy too
                event = json.loads(ws.receive(timeout=5))
                assert event == {
                    "type": "message",
                    "id": bob_id,
                    "name": "bob",
                    "text": "hello ann",
                }
        left = json.loads(ann.receive(timeout=5))
        assert (left["type"], left["name"]) == ("leave", "bob")
    assert chat_client.topics.topics == frozenset()  # everyone left the room's topic


def test_a_connection_is_its_own_iterator() -> None:
    """``iter(connection)`` is the connection; ``next()`` gives the next message and
    ``StopIteration`` once the peer has closed normally (1000), every time after."""
    seen: list[Any] = []
    ended = gevent.event.Event()

    def handler(connection: Connection, request: Request) -> None:
        assert iter(connection) is connection
        seen.append(next(connection))
        seen.extend(connection)  # the rest, until the close
        with pytest.raises(StopIteration):
            next(connection)
        seen.append("ended")
        ended.set()

    client = TestClient(handler)
    with client.connect() as ws:
        ws.send("one")
        ws.send(b"two", binary=True)
        ws.send("three")
    assert ended.wait(5)
    assert seen == ["one", b"two", "three", "ended"]
