#!/usr/bin/env python3
"""Fan-out benchmark across processes: geventws' topics against Django Channels
(channels_redis) and websockets with Redis pub/sub, per second of CPU, in the same run.

Every measurement starts afresh: one ``redis-server`` (Debian's, on a free port,
persistence off) and two server processes of the peer, both using that Redis. Node's
``ws`` package (scripts/bench/pubsub_loadgen.js) opens 1,000 subscribers, half on each
process, and one publisher connection on the first process (``pub1``) or one on each
(``pub2``); every message a publisher sends reaches every subscriber through the
peer's broker. Once every connection is open and a warm-up message has reached every
subscriber, two phases run on the same connections:

* ``rate``: 64-byte messages published at a fixed rate (``--rate``, in total);
  publish-to-delivery latency p50/p99, from a timestamp inside the payload, taken by
  each subscriber on arrival; and the CPU that rate costs;
* ``throughput``: ``--window`` messages kept in flight (the next one is published as
  soon as one reached every subscriber): deliveries per second, and per CPU-second.

CPU is user + system time from /proc/PID/stat of the two server processes (all their
threads, and any process they forked) *and* of redis-server (all its threads), counted
from the start to the end of each phase. The load generator's CPU is reported (as a
share of one core) but not counted. Rounds are interleaved (the order of the peers
rotates each round); tables give medians and geventws' ratio to each peer per CPU-second.

Peers:
  geventws          ``geventws serve pubsub_geventws:handle --broker redis://...``
                    (scripts/bench/pubsub_geventws.py): connection.subscribe/publish
  channels-core     Django Channels, AsyncWebsocketConsumers with group_add/group_send
                    (scripts/bench/pubsub_channels.py) under uvicorn, one worker per
                    process, channels_redis.core.RedisChannelLayer
  channels-pubsub   the same with channels_redis.pubsub.RedisPubSubChannelLayer
  websockets-redis  websockets' asyncio server; a task per process subscribed to a Redis
                    channel (redis.asyncio) relays to local clients with broadcast()
                    (scripts/bench/pubsub_websockets.py)
  websockets-redis-uvloop  the same on uvloop (not run unless named in --servers)

Usage: python scripts/bench_pubsub.py [--rounds 3] [--seconds 5] [--rate 100]
       [--window 16] [--subscribers 1000] [--servers ...] [--scenarios pub1,pub2]
       [--write-results]
Needs: pip install -e '.[redis]' channels channels_redis django 'uvicorn[standard]'
websockets; Debian's redis-server; npm install in scripts/bench (done on first run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from bench_echo import (
    BENCH,
    HERE,
    cpu_seconds,
    ensure_node_modules,
    free_port,
    milliseconds,
    raise_fd_limit,
    report,
    rotated,
)

SERVERS = ["geventws", "channels-core", "channels-pubsub", "websockets-redis"]
OPTIONAL_SERVERS = ["websockets-redis-uvloop"]
#: Publishers: on the first server process only, or one on each.
SCENARIOS = {"pub1": 1, "pub2": 2}
#: Publish rates of the latency phases, messages per second: 4 (4,000 deliveries/s
#: with 1,000 subscribers) is what every peer sustains on a 2-core machine; 100
#: (100,000 deliveries/s) is the issue's aim for geventws.
RATES = [4.0, 100.0]
#: Runs shorter than this are labelled as smoke runs in the results.
SMOKE_ROUNDS = 3
SMOKE_SECONDS = 5.0
#: Seconds after which the load generator gives up on a message that some subscriber
#: hasn't received (it counts it as lost).
LOST_AFTER = 30
#: Seconds: a rate is not sustained once a message took longer than this to reach every
#: subscriber (the phase then ends, and higher rates are skipped).
OVERLOAD = 1
REDIS_SERVER = "redis-server"


# -- processes --------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of ``pid`` and of its live descendants;
    0 for a process that is gone."""
    try:
        total = cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(tree_cpu(int(child)) for child in children)
    return total


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    """Return once something accepts connections on ``port``; RuntimeError if
    ``process`` exits or 30 s pass first."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Redis:
    """A redis-server on a free loopback port, persistence off, in a temporary dir."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = tempfile.TemporaryDirectory(prefix="bench-pubsub-redis-")
        command = [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory.name,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port, self.process, "redis-server")
            self.ping()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        try:
            stop(self.process)
        finally:
            self.directory.cleanup()


def server_command(name: str, port: int, redis_url: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one server process of peer ``name``
    (run in scripts/bench)."""
    if name == "geventws":
        command = [
            sys.executable, "-m", "geventws", "serve", "pubsub_geventws:handle",
            "--port", str(port), "--broker", redis_url, "--log-level", "warning",
        ]  # fmt: skip
        return command, {}
    if name.startswith("channels-"):
        command = [
            sys.executable, "-m", "uvicorn", "pubsub_channels:application",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
            "--lifespan", "off",
        ]  # fmt: skip
        layer = name.removeprefix("channels-")
        return command, {"BENCH_CHANNEL_LAYER": layer, "BENCH_REDIS_URL": redis_url}
    if name.startswith("websockets-redis"):
        command = [sys.executable, "pubsub_websockets.py", str(port), redis_url]
        if name.endswith("-uvloop"):
            command.append("uvloop")
        return command, {}
    raise ValueError(f"unknown server {name!r}")


class ServerProcess:
    """One server process of a peer, on a free port; its output goes to ``log``."""

    def __init__(self, name: str, redis_url: str, log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        command, extra = server_command(name, self.port, redis_url)
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=BENCH,
                env={**os.environ, **extra},
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=raise_fd_limit,
            )
        try:
            wait_for_port(self.port, self.process, name)
        except BaseException:
            stop(self.process)
            raise

    def output(self) -> str:
        """The last lines the process wrote."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


# -- one measurement --------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured. CPU figures are seconds over the phase."""

    deliveries: int = 0
    seconds: float = 0.0
    published: int = 0
    p50: Optional[float] = None
    p99: Optional[float] = None
    lost: int = 0
    stalled: int = 0
    overloaded: bool = False  # a rate phase that fell behind, or was skipped
    # (p50, p99) of the subscribers of each server process
    per_server: list[tuple[Optional[float], Optional[float]]] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)  # per server process
    redis_cpu: float = 0.0
    loadgen_cpu: float = 0.0

    @property
    def cpu(self) -> float:
        """Servers and Redis."""
        return sum(self.server_cpu) + self.redis_cpu

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    @property
    def per_cpu(self) -> float:
        return self.deliveries / max(self.cpu, 1e-9)


def rate_phase(rate: float) -> str:
    return f"rate {rate:g}"


def run(
    name: str,
    publishers: int,
    subscribers: int,
    seconds: float,
    rates: list[float],
    window: int,
    size: int,
) -> dict[str, Phase]:
    """Redis, two server processes of ``name`` and the load generator; the phases
    (``rate_phase(rate)`` for each rate, then "throughput") as measured. Raises
    RuntimeError if the load generator failed (with the servers' last output)."""
    redis = Redis()
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="bench-pubsub-") as logs:
        try:
            for i in range(2):
                servers.append(ServerProcess(name, redis.url, Path(logs) / f"server{i}.log"))
            time.sleep(0.5)
            phases: list[list[Any]] = [["throughput", "throughput", seconds, window]]
            phases += [[rate_phase(r), "rate", seconds, r] for r in sorted(rates)]
            config = {
                "subscribers": subscribers,
                "subs": [server.url("/sub") for server in servers],
                "pubs": [server.url("/pub") for server in servers[:publishers]],
                "size": size,
                "phases": phases,
                "lostAfter": LOST_AFTER,
                "overload": OVERLOAD,
            }
            try:
                return drive(name, config, servers, redis)
            except RuntimeError as exc:
                outputs = "\n".join(f"-- server {i}:\n{s.output()}" for i, s in enumerate(servers))
                raise RuntimeError(f"{exc}\n{outputs}") from None
        finally:
            for server in servers:
                stop(server.process)
            redis.stop()


def drive(
    name: str, config: dict[str, Any], servers: list[ServerProcess], redis: Redis
) -> dict[str, Phase]:
    """Run the load generator with ``config``; read every process's CPU at the start
    and end of each phase."""
    process = subprocess.Popen(
        ["node", str(BENCH / "pubsub_loadgen.js"), json.dumps(config)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,
    )
    assert process.stdout is not None
    pids = [server.process.pid for server in servers]

    def snapshot() -> tuple[list[float], float, float]:
        return [tree_cpu(pid) for pid in pids], tree_cpu(redis.process.pid), tree_cpu(process.pid)

    phases: dict[str, Phase] = {}
    started: Optional[tuple[list[float], float, float]] = None
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "start":
                started = snapshot()
            elif event["event"] == "end":
                ended = snapshot()
                assert started is not None
                phases[event["phase"]] = Phase(
                    deliveries=event["deliveries"],
                    seconds=event["seconds"],
                    published=event["published"],
                    lost=event["lost"],
                    server_cpu=[b - a for a, b in zip(started[0], ended[0], strict=True)],
                    redis_cpu=ended[1] - started[1],
                    loadgen_cpu=ended[2] - started[2],
                )
            elif event["event"] == "skipped":
                phases[event["phase"]] = Phase(overloaded=True)
            elif event["event"] == "drained":
                phase = phases[event["phase"]]
                phase.stalled = event["stalled"]
                phase.overloaded = event["overloaded"]
                phase.per_server = [(s["p50"], s["p99"]) for s in event["servers"]]
                phase.p50 = event["p50"]
                phase.p99 = event["p99"]
        total = sum(phase[2] for phase in config["phases"])
        if process.wait(timeout=total + 60) != 0:
            raise RuntimeError(f"{name}: the load generator failed")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    return phases


# -- results ----------------------------------------------------------------------------


def lost(phase: Phase) -> int:
    """Messages that never reached every subscriber; not counted in a phase that fell
    behind (what hadn't arrived after ``LOST_AFTER`` may be late rather than lost)."""
    return 0 if phase.overloaded else phase.lost + phase.stalled


def describe(name: str, scenario: str, phases: dict[str, Phase]) -> str:
    full = phases["throughput"]
    split = "+".join(f"{cpu:.2f}" for cpu in full.server_cpu)
    parts = [
        f"{scenario} {name:24} {full.rate:9,.0f} deliveries/s {full.per_cpu:9,.0f}/CPU-s "
        f"(CPU s: servers {split}, redis {full.redis_cpu:.2f}, loadgen "
        f"{full.loadgen_cpu / full.seconds:.0%}) p50 {milliseconds(full.p50)} ms "
        f"p99 {milliseconds(full.p99)} ms lost {full.lost + full.stalled}"
    ]
    for label, phase in phases.items():
        if label == "throughput":
            continue
        if phase.overloaded:
            parts.append(f"{label}/s: not sustained")
        else:
            split = " ".join(
                f"{milliseconds(p50)}/{milliseconds(p99)}" for p50, p99 in phase.per_server
            )
            parts.append(
                f"{label}/s: p50 {milliseconds(phase.p50)} ms p99 {milliseconds(phase.p99)} "
                f"ms (p50/p99 per server: {split}), {phase.cpu / phase.seconds:.2f} cores, "
                f"lost {lost(phase)}"
            )
    return " | ".join(parts)


def median(values: list[float]) -> float:
    return statistics.median(values)


def header(rates: list[float]) -> list[str]:
    columns = [
        "scenario",
        "server",
        "deliveries/s",
        "per CPU-s (servers + Redis)",
        "Redis share of CPU",
        "load generator CPU",
    ]
    for rate in rates:
        columns += [f"p50 / p99 ms at {rate:g} msg/s", f"cores at {rate:g} msg/s"]
    return [*columns, "lost", "geventws ratio (CPU)"]


def latency_cell(phases: list[Phase]) -> str:
    """Median p50 / p99 of the rounds, unless a round didn't sustain the rate."""
    if any(p.overloaded for p in phases):
        return "not sustained"
    p50 = median([p.p50 for p in phases if p.p50 is not None])
    p99 = median([p.p99 for p in phases if p.p99 is not None])
    return f"{milliseconds(p50)} / {milliseconds(p99)}"


def rows_for(
    scenario: str,
    names: list[str],
    rates: list[float],
    results: dict[tuple[str, str], list[dict[str, Phase]]],
) -> list[list[str]]:
    def per_cpu(name: str) -> float:
        return median([r["throughput"].per_cpu for r in results[(scenario, name)]])

    ours = per_cpu("geventws") if "geventws" in names else None
    rows = []
    for name in names:
        runs = results[(scenario, name)]
        full = [r["throughput"] for r in runs]
        row = [
            scenario,
            name,
            f"{median([p.rate for p in full]):,.0f}",
            f"{per_cpu(name):,.0f}",
            f"{median([p.redis_cpu / max(p.cpu, 1e-9) for p in full]):.0%}",
            f"{median([p.loadgen_cpu / p.seconds for p in full]):.0%}",
        ]
        for rate in rates:
            fixed = [r[rate_phase(rate)] for r in runs]
            behind = any(p.overloaded for p in fixed)
            cores = "" if behind else f"{median([p.cpu / p.seconds for p in fixed]):.2f}"
            row += [latency_cell(fixed), cores]
        row.append(str(sum(lost(p) for r in runs for p in r.values())))
        row.append("" if ours is None or name == "geventws" else f"{ours / per_cpu(name):.2f}x")
        rows.append(row)
    return rows


def redis_version() -> str:
    out = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return "?"


def versions(servers: list[str]) -> str:
    """The geventws commit and the versions of Python, Redis, Node and the packages
    behind ``servers``."""
    revision = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    parts = [f"geventws at {revision}"] if revision else []
    parts += [f"Python {platform.python_version()}", f"redis-server {redis_version()}"]
    wanted = ["redis"]
    if "geventws" in servers:
        wanted += ["gevent"]
    if any(s.startswith("channels") for s in servers):
        wanted += ["channels", "channels_redis", "Django", "uvicorn", "uvloop", "httptools"]
        wanted += ["websockets", "msgpack"]
    if any(s.startswith("websockets") for s in servers):
        wanted += ["websockets"]
    if "websockets-redis-uvloop" in servers:
        wanted += ["uvloop"]
    seen = set()
    for dist in wanted:
        if dist in seen:
            continue
        seen.add(dist)
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    ws = json.loads((BENCH / "node_modules" / "ws" / "package.json").read_text())["version"]
    parts.append(f"Node {node.stdout.strip().lstrip('v')} with ws {ws}")
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="of each phase")
    parser.add_argument(
        "--rates",
        default=",".join(f"{r:g}" for r in RATES),
        help="messages per second of the rate phases (comma-separated)",
    )
    parser.add_argument(
        "--window", type=int, default=16, help="messages in flight in the throughput phase"
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64, help="message size, 24 bytes or more")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--write-results", action="store_true", help="write scripts/bench/PUBSUB.rst"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for name in servers:
        if name not in SERVERS + OPTIONAL_SERVERS:
            parser.error(f"unknown server {name!r}")
    for label in scenarios:
        if label not in SCENARIOS:
            parser.error(f"unknown scenario {label!r}")
    if args.size < 24:
        parser.error("--size is at least 24 bytes (sequence number and timestamp)")
    ensure_node_modules()
    raise_fd_limit()

    results: dict[tuple[str, str], list[dict[str, Phase]]] = {}
    for round_ in range(args.rounds):
        for scenario in scenarios:
            for name in rotated(servers, round_):
                phases = run(
                    name,
                    SCENARIOS[scenario],
                    args.subscribers,
                    args.seconds,
                    rates,
                    args.window,
                    args.size,
                )
                results.setdefault((scenario, name), []).append(phases)
                print(f"round {round_ + 1} " + describe(name, scenario, phases), flush=True)

    command = (
        f"python scripts/bench_pubsub.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--rates {','.join(f'{r:g}' for r in rates)} --window {args.window} --subscribers {args.subscribers} "
        f"--size {args.size} --servers {','.join(servers)} --scenarios {','.join(scenarios)}"
    )
    smoke = (
        "A short smoke run: indicative only. "
        if args.rounds < SMOKE_ROUNDS or args.seconds < SMOKE_SECONDS
        else ""
    )
    caption = (
        f"{smoke}Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, loopback, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per phase, medians, "
        f"``{command}``. {args.subscribers:,} subscribers on two server processes sharing "
        f"one Redis, {args.size}-byte messages; pub1 = one publisher on the first "
        f"process, pub2 = one on each. deliveries/s and per CPU-s with {args.window} "
        f"messages in flight; CPU = both server processes + redis-server; latency "
        f"(publish to delivery) and CPU use (cores) at fixed publish rates "
        f"({', '.join(f'{r:g} msg/s = {r * args.subscribers:,.0f} deliveries/s' for r in rates)}"
        f"), not sustained once a message took over {OVERLOAD} s to reach every "
        f"subscriber; lost = messages that didn't reach every subscriber, all phases and "
        f"rounds. {versions(servers)}."
    )
    rows = [row for scenario in scenarios for row in rows_for(scenario, servers, rates, results)]
    path = BENCH / "PUBSUB.rst" if args.write_results else None
    report(caption, header(rates), rows, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
