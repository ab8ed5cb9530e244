"""Topics on connections and servers: in-process, then across real processes and hosts
through a real redis-server (``geventws serve --workers 2 --broker``, gunicorn), with
websocket-client connections as independent peers.

Every wait is bounded; absence is never inferred from silence: a client that must not
get a topic's messages is subscribed to a control topic on which each publisher
announces its end *after* its messages (one publisher's messages reach a subscriber in
publish order, across topics too), so seeing the markers proves nothing else came.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import gevent
import pytest
import websocket  # websocket-client

from geventws import Connection, InvalidState, Request, WebSocketServer, connect

from .redis_server import RedisServer, redis_servers
from .utils import ServerThread, start_serve_command, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Client:
    """A websocket-client connection to ``tests.topics_app``; data messages (what was
    published) go to :attr:`inbox`, command answers are returned."""

    def __init__(self, port: int, *topics: str, path: str = "/") -> None:
        query = "&".join(f"topic={topic}" for topic in topics)
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}?{query}", timeout=20)
        hello = json.loads(self.ws.recv())
        self.pid: int = hello["pid"]
        self.inbox: list[str] = []
        self.close_code: Optional[int] = None

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        self.ws.send(json.dumps(command))
        while True:
            message = self.ws.recv()
            if message.startswith("{"):
                return json.loads(message)  # type: ignore[no-any-return]
            self.inbox.append(message)

    def publish(self, topic: str, data: str) -> int:
        return int(self._command({"publish": topic, "data": data})["published"])

    def unsubscribe(self, topic: str) -> list[str]:
        return list(self._command({"unsubscribe": topic})["topics"])

    def subscribe(self, topic: str) -> list[str]:
        return list(self._command({"subscribe": topic})["topics"])

    def until(self, predicate: Callable[[list[str]], bool]) -> list[str]:
        """Receive until ``predicate(inbox)`` holds (each message within 20 s)."""
        while not predicate(self.inbox):
            self.inbox.append(self.ws.recv())
        return self.inbox

    def wait_close(self) -> Optional[int]:
        """Read until the server closes; its close code."""
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_code = int.from_bytes(data[:2], "big") if data else 1005
                    return self.close_code
        except websocket.WebSocketConnectionClosedException:
            return self.close_code

    def close(self) -> None:
        self.ws.close()


def connect_to_every_worker(port: int, workers: int, per_worker: int, *topics: str) -> list[Client]:
    """Open clients until each of ``workers`` processes has ``per_worker`` of them (the
    kernel spreads connections across workers); close the extras."""
    by_pid: dict[int, list[Client]] = {}
    extras: list[Client] = []
    for _ in range(400):
        client = Client(port, *topics)
        clients = by_pid.setdefault(client.pid, [])
        (clients if len(clients) < per_worker else extras).append(client)
        if len(by_pid) == workers and all(len(c) == per_worker for c in by_pid.values()):
            break
    for client in extras:
        client.close()
    assert len(by_pid) == workers, f"connections reached {len(by_pid)} of {workers} workers"
    return [client for clients in by_pid.values() for client in clients]


def sequence(name: str, count: int) -> list[str]:
    return [f"{name}-{i}" for i in range(count)]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    yield from redis_servers(tmp_path)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    """``geventws serve tests.topics_app:handle ARGS`` subprocesses; stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
        log = tmp_path / f"serve{len(started)}.log"
        command = ["tests.topics_app:handle", "--close-timeout", "2", *args]
        process, port = start_serve_command(command, log)
        process.log = log  # type: ignore[attr-defined]
        started.append(process)
        return process, port

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# -- in one process --------------------------------------------------------------------------


def test_connection_topics_in_one_process(serve: Callable[..., ServerThread]) -> None:
    """Subscribe, publish to the others (not the publisher), unsubscribe, and a closed
    connection leaves its topics; binary stays binary."""

    def handler(connection: Connection, request: Request) -> None:
        connection.subscribe("room")
        connection.send(json.dumps(sorted(connection.topics)))
        for message in connection:
            if message == "leave":
                connection.send(json.dumps([connection.unsubscribe("room"), *connection.topics]))
            elif isinstance(message, bytes):
                connection.publish("room", message, binary=True)
            else:
                connection.send(json.dumps({"delivered": connection.publish("room", message)}))

    server = serve(handler)
    with connect(server.url) as a, connect(server.url) as b, connect(server.url) as c:
        for ws in (a, b, c):
            assert json.loads(ws.receive(timeout=10)) == ["room"]
        a.send("hello")
        assert json.loads(a.receive(timeout=10)) == {"delivered": 2}  # b and c, not a
        assert b.receive(timeout=10) == "hello" and c.receive(timeout=10) == "hello"
        c.send("leave")
        assert json.loads(c.receive(timeout=10)) == [True]  # was subscribed; now none
        a.send(b"\x00\x01", binary=True)
        assert b.receive(timeout=10) == b"\x00\x01"
        b.close()
        assert wait_for(lambda: len(server.server.topics.subscribers("room")) == 1)
        a.send("alone")
        assert json.loads(a.receive(timeout=10)) == {"delivered": 0}
        # c left the topic: neither the binary message nor "alone" reached it. Its own
        # answer comes next (anything delivered to it before would come first).
        c.send("from c")
        assert json.loads(c.receive(timeout=10)) == {"delivered": 1}
        assert a.receive(timeout=10) == "from c"


def test_server_publish_reaches_every_subscriber_from_a_background_greenlet(
    serve: Callable[..., ServerThread],
) -> None:
    def handler(connection: Connection, request: Request) -> None:
        connection.subscribe(request.args.get("topic", "ticks"))
        connection.send("ready")
        for _ in connection:
            pass

    server = serve(handler)
    with connect(server.url) as a, connect(server.url + "/?topic=other") as other:
        assert a.receive(timeout=10) == "ready" and other.receive(timeout=10) == "ready"

        def ticker() -> None:
            for i in range(5):
                server.server.publish("ticks", f"tick {i}")
                gevent.sleep(0)
            server.server.publish("other", "done")

        server.call(ticker)
        assert [a.receive(timeout=10) for _ in range(5)] == [f"tick {i}" for i in range(5)]
        assert other.receive(timeout=10) == "done"  # and nothing before it


def test_client_connections_have_no_topics(serve: Callable[..., ServerThread]) -> None:
    server = serve(lambda connection, request: connection.receive())
    with connect(server.url) as ws:
        with pytest.raises(InvalidState):
            ws.subscribe("room")
        with pytest.raises(InvalidState):
            ws.publish("room", "x")
        assert ws.topics == frozenset()
        ws.send("bye")


def test_subscribe_accepts_the_handshake_and_refuses_bad_topics(
    serve: Callable[..., ServerThread],
) -> None:
    errors: list[str] = []

    def handler(connection: Connection, request: Request) -> None:
        assert connection.handshake_pending
        connection.subscribe("room")  # accepts first: nothing published afterwards is lost
        assert not connection.handshake_pending
        for bad in ("", 3):
            try:
                connection.subscribe(bad)  # type: ignore[arg-type]
            except ValueError as exc:
                errors.append(str(exc))
        connection.send("ok")

    server = serve(handler)
    with connect(server.url) as ws:
        assert ws.receive(timeout=10) == "ok"
    assert len(errors) == 2


def test_unknown_broker_url_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown broker URL"):
        WebSocketServer(("127.0.0.1", 0), lambda c, r: None, broker="amqp://x")


# -- across processes and hosts, through Redis -----------------------------------------------


def test_two_hosts_with_two_workers_each_fan_out_exactly_once_in_order(
    redis_server: Callable[..., RedisServer],
    serve_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """Two ``geventws serve --workers 2 --broker`` commands on two ports stand in for two
    hosts. Subscribers on all four workers get every message published from any of them
    exactly once and in publish order; unsubscribed and closed connections get nothing;
    SIGTERM gives 1001 everywhere and exit 0."""
    redis = redis_server()
    hosts = [serve_process("--workers", "2", "--broker", redis.url) for _ in range(2)]
    subscribers = [
        client for _, port in hosts for client in connect_to_every_worker(port, 2, 2, "room", "ctl")
    ]
    assert len({client.pid for client in subscribers}) == 4
    publishers = subscribers[::2]  # one on each worker
    bystanders = [Client(port, "ctl") for _, port in hosts]
    leavers = [Client(port, "room", "ctl") for _, port in hosts]
    for client in leavers:
        assert client.unsubscribe("room") == ["ctl"]
    closed = [Client(port, "room") for _, port in hosts]
    for client in closed:
        client.close()
    count = 40
    for round_ in range(count):  # interleaved publishers
        for index, publisher in enumerate(publishers):
            publisher.publish("room", f"p{index}-{round_}")
    for index, publisher in enumerate(publishers):
        publisher.publish("ctl", f"end-p{index}")
    ends = {f"end-p{index}" for index in range(len(publishers))}
    for client in subscribers:
        own = publishers.index(client) if client in publishers else None
        expected_ends = ends - {f"end-p{own}"}
        inbox = client.until(lambda got, e=expected_ends: e <= set(got))  # type: ignore[misc]
        for index in range(len(publishers)):
            if index == own:
                assert not [m for m in inbox if m.startswith(f"p{index}-")]  # never its own
                continue
            got = [m for m in inbox if m.startswith(f"p{index}-")]
            assert got == sequence(f"p{index}", count), f"from publisher {index}"
        assert sorted(m for m in inbox if m.startswith("end-")) == sorted(expected_ends)
    for client in bystanders + leavers:
        inbox = client.until(lambda got: ends <= set(got))
        assert sorted(inbox) == sorted(ends), "a connection outside the topic got its messages"
    # A graceful stop: every connection gets 1001, both commands exit 0.
    for process, _ in hosts:
        process.send_signal(signal.SIGTERM)
    for client in subscribers + bystanders + leavers:
        assert client.wait_close() == 1001
    for process, _ in hosts:
        assert process.wait(30) == 0


def test_redis_outage_keeps_local_delivery_and_restores_subscriptions(
    redis_server: Callable[..., RedisServer],
    serve_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """Redis killed mid-stream: publishing keeps answering and local subscribers keep
    receiving; once Redis is back, subscriptions are restored (one log line when lost,
    one when back) and later messages reach every process again."""
    redis = redis_server()
    (process_a, port_a), (process_b, port_b) = [
        serve_process("--broker", redis.url) for _ in range(2)
    ]
    publisher, local = Client(port_a, "room"), Client(port_a, "room")
    remote = Client(port_b, "room")
    publisher.publish("room", "before")
    assert local.until(lambda got: "before" in got) == ["before"]
    assert remote.until(lambda got: "before" in got) == ["before"]
    redis.kill()
    for i in range(10):
        assert publisher.publish("room", f"during-{i}") == 1  # answered; delivered locally
    assert local.until(lambda got: "during-9" in got)[1:] == sequence("during", 10)
    redis.start()
    # Until B's subscription is restored, probes may not cross: send them until one does.
    for i in range(600):
        publisher.publish("room", f"probe-{i}")
        try:
            remote.ws.settimeout(0.05)
            remote.inbox.append(remote.ws.recv())
            break
        except websocket.WebSocketTimeoutException:
            continue
        finally:
            remote.ws.settimeout(20)
    assert any(m.startswith("probe-") for m in remote.inbox), "subscriptions never came back"
    for i in range(10):
        publisher.publish("room", f"after-{i}")
    for client in (local, remote):
        got = client.until(lambda inbox: "after-9" in inbox)
        assert [m for m in got if m.startswith("after-")] == sequence("after", 10)
    for process in (process_a, process_b):
        log = process.log.read_text()  # type: ignore[attr-defined]
        assert log.count("Redis broker") and log.count(" lost (") == 1, log
        assert log.count(" is back: ") == 1, log
        assert "Traceback" not in log, log


def test_gunicorn_workers_share_topics_through_the_environment_variable(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """``GEVENTWS_BROKER`` gives gunicorn's workers (GeventWebSocketWorker, -w 2) their
    broker: a message published on one worker reaches subscribers on the other."""
    import re

    redis = redis_server()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            # (gunicorn 27's idle gevent workers wait out the whole graceful timeout on
            # SIGTERM, even gevent_pywsgi's with no request at all: keep it short.)
            [sys.executable, "-m", "gunicorn", "-k", "geventws.worker.GeventWebSocketWorker",
             "-w", "2", "-b", "127.0.0.1:0", "--graceful-timeout", "3",
             "tests.topics_app:app"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "GEVENTWS_BROKER": redis.url},
        )  # fmt: skip
    try:
        port = 0

        def ready() -> bool:
            nonlocal port
            text = log_path.read_text()
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            port = int(match.group(1)) if match else 0
            return (port and text.count("Booting worker") == 2) or process.poll() is not None

        assert wait_for(ready, timeout=60) and port, log_path.read_text()
        by_pid: dict[int, Client] = {}
        extras: list[Client] = []
        for _ in range(500):  # gunicorn's workers share one accept queue: keep trying
            client = Client(port, "room", path="/ws")
            if client.pid in by_pid:
                extras.append(client)  # held open: its worker is a bit busier
                time.sleep(0.005)
            else:
                by_pid[client.pid] = client
            if len(by_pid) == 2:
                break
        for client in extras:
            client.close()
        assert len(by_pid) == 2, "connections never reached both workers"
        first, second = by_pid.values()
        first.publish("room", "across workers")
        assert second.until(bool) == ["across workers"]
        first.close()
        process.send_signal(signal.SIGTERM)
        assert second.wait_close() == 1001
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_subscribed_then_published_elsewhere_always_arrives(
    redis_server: Callable[..., RedisServer],
    serve_process: Callable[..., tuple[subprocess.Popen[bytes], int]],
) -> None:
    """``subscribe()`` returns once Redis confirmed: a message published from another
    process right after it arrives, every time, without any sleep."""
    redis = redis_server()
    (_, port_a), (_, port_b) = [serve_process("--broker", redis.url) for _ in range(2)]
    publisher, subscriber = Client(port_a), Client(port_b)
    for i in range(30):
        topic = f"fresh{i}"
        assert subscriber.subscribe(topic) == sorted({f"fresh{j}" for j in range(i + 1)})
        publisher.publish(topic, f"m{i}")
        assert subscriber.until(lambda got, i=i: f"m{i}" in got)[-1] == f"m{i}"  # type: ignore[misc]
    assert subscriber.inbox == [f"m{i}" for i in range(30)]
