#!/usr/bin/env python3
"""Echo benchmark: geventws against its peers, per second of server CPU, in the same run.

Each server runs in its own process on loopback, started afresh for every measurement;
Node's ``ws`` package (scripts/bench/loadgen.js) generates the load. For each scenario
and server it reports the rate per second of wall time and per second of *server* CPU
(user + system time of the server process, all its threads, from /proc, counted from
the moment every connection is open to the end of the run): on a 2-core machine the
load generator takes a core, so the per-CPU figure is the fair one. Latencies are
measured by the load generator. Rounds are interleaved across servers (the order of
the servers rotates from one round to the next) and the table gives medians, plus the
ratio of geventws to each peer per CPU-second.

Servers:
  geventws            ``geventws serve geventws.examples.echo:handle`` (one process)
  geventws-no-access-log
                      the same with ``--no-access-log`` (not run unless named): what
                      the access line costs, and what a deployment whose proxy logs
                      the connections gets
  gevent-ceiling      the raw gevent ceiling, scripts/bench/ceiling.py: one recv, every
                      frame it brought answered with one send, C unmasking, nothing else
  gevent-ceiling-log  the same, plus geventws' access line per connection, logged as
                      ``geventws serve`` logs it by default (INFO to stderr)
  picows              picows' echo listener on asyncio (scripts/bench/peers.py)
  node-ws             Node's ws package as a server (scripts/bench/ws_server.js)
  gevent-websocket    gevent-websocket's WSGI handler on gevent's pywsgi, monkey-patched
  websockets          websockets' asyncio server
  geventws-baseline   an earlier geventws, from the checkout given with --baseline PATH
                      (a git worktree with its accelerator built: python setup.py
                      build_ext --inplace), for before/after figures in the same run

Scenarios:
  handshake  50 parallel loops of: open a connection, send 32 bytes, get the echo,
             close (close handshake, TCP closed); counts cycles, p50/p99 of a cycle
  small      32-byte text messages, 100 connections, 16 in flight on each
  small1     32-byte text messages, 100 connections, 1 in flight on each
  large      1 MiB binary messages, 4 connections, 1 in flight on each; also in MB
             (10^6 bytes of payload echoed, counted once) per server CPU-second
  idle       memory per idle connection with 10,000 connections open (RSS delta / count)
Latencies (p50/p99) are round trips: from the send of a message to its echo's arrival.

Usage: python scripts/bench_echo.py [--rounds 3] [--seconds 5] [--idle 10000]
       [--servers geventws,gevent-ceiling,...] [--scenarios handshake,small,...]
       [--baseline PATH] [--write-results]
Needs: pip install -e '.[bench]' and picows; npm install in scripts/bench (done on
first run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench"
TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = [
    "geventws",
    "gevent-ceiling",
    "gevent-ceiling-log",
    "picows",
    "node-ws",
    "gevent-websocket",
    "websockets",
]
#: Run only when named in ``--servers``.
OTHER_SERVERS = ["geventws-no-access-log", "geventws-baseline"]
#: The checkout that "geventws-baseline" runs (``--baseline``).
BASELINE: Optional[str] = None


def python_for(name: str) -> list[str]:
    """The start of a Python command line that imports geventws from the ``--baseline``
    checkout for "geventws-baseline", the installed one otherwise; what follows it is
    ``-m MODULE ARGS`` or ``SCRIPT ARGS``, as for ``python``."""
    if name != "geventws-baseline":
        return [sys.executable]
    if BASELINE is None:
        raise SystemExit("geventws-baseline needs --baseline PATH")
    bootstrap = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {BASELINE!r})\n"
        "if sys.argv[1] == '-m':\n"
        "    del sys.argv[:2]\n"
        "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "else:\n"
        "    del sys.argv[0]\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return [sys.executable, "-c", bootstrap]


@dataclass(frozen=True)
class Sample:
    """One measurement: units (messages, cycles, deliveries) per second of wall time
    and per second of server CPU; latency percentiles in milliseconds, when measured."""

    rate: float
    per_cpu: float
    p50: Optional[float] = None
    p99: Optional[float] = None


@dataclass(frozen=True)
class Scenario:
    """A load: ``kind`` "echo" (``connections`` x ``inflight`` messages of ``size``
    bytes in flight) or "handshake" (``connections`` parallel open/echo/close loops)."""

    kind: str
    connections: int
    inflight: int
    size: int
    mode: str
    unit: str


SCENARIOS = {
    "handshake": Scenario("handshake", 50, 1, 32, "text", "cycles"),
    "small": Scenario("echo", 100, 16, 32, "text", "msg"),
    "small1": Scenario("echo", 100, 1, 32, "text", "msg"),
    "large": Scenario("echo", 4, 1, 2**20, "binary", "msg"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def ensure_node_modules() -> None:
    """Run ``npm install`` in scripts/bench unless every dependency is there."""
    needed = json.loads((BENCH / "package.json").read_text())["dependencies"]
    if not all((BENCH / "node_modules" / name).exists() for name in needed):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=BENCH, check=True)


def server_command(name: str, port: int, *flags: str) -> list[str]:
    """The command line of the echo server ``name``; ``flags`` are extra ``geventws
    serve`` flags (geventws only)."""
    if name == "geventws-no-access-log":
        flags = (*flags, "--no-access-log")
    if name.startswith("geventws"):
        return [
            *python_for(name),
            "-m",
            "geventws",
            "serve",
            "geventws.examples.echo:handle",
            "--port",
            str(port),
            "--max-size",
            "64MiB",
            # Logging at its default, INFO: one access line per connection (unless
            # geventws-no-access-log).
            *flags,
        ]
    if name == "gevent-ceiling":
        return [sys.executable, str(BENCH / "ceiling.py"), str(port)]
    if name == "gevent-ceiling-log":
        return [sys.executable, str(BENCH / "ceiling.py"), str(port), "log"]
    if name == "node-ws":
        return ["node", str(BENCH / "ws_server.js"), str(port), "echo"]
    return [sys.executable, str(BENCH / "peers.py"), name, str(port)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    """A server process on a free port; ``command(name, port)`` gives its command line."""

    def __init__(
        self, name: str, command: Callable[[str, int], list[str]] = server_command
    ) -> None:
        self.name = name
        self.port = free_port()
        self.process = subprocess.Popen(
            command(name, self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=raise_fd_limit,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.1)
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(server: Server, *args: object, timeout: float) -> tuple[dict[str, float], float]:
    """Run ``node loadgen.js ARGS``; return its result and the server's CPU seconds
    between its "start" line and its first JSON line (the result; the JSON lines that
    follow, if any, are merged into it)."""
    process = subprocess.Popen(
        ["node", str(BENCH / "loadgen.js"), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline().strip()
        if line != "start":
            raise RuntimeError(f"{server.name}: load generator said {line!r}")
        cpu0 = cpu_seconds(server.process.pid)
        result: dict[str, float] = json.loads(process.stdout.readline())
        cpu1 = cpu_seconds(server.process.pid)
        for line in process.stdout:
            result.update(json.loads(line))
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    return result, cpu1 - cpu0


def echo_run(
    server: Server,
    connections: int,
    inflight: int,
    size: int,
    seconds: float,
    mode: str,
    compress: bool = False,
) -> Sample:
    """``connections`` x ``inflight`` messages of ``size`` bytes kept in flight for
    ``seconds``; raises RuntimeError if a connection failed."""
    args = ("echo", server.url, connections, inflight, size, seconds, mode, int(compress))
    result, cpu = measure(server, *args, timeout=seconds + 90)
    if result["errors"]:
        raise RuntimeError(f"{server.name}: {result['errors']} errors")
    return Sample(
        result["messages"] / result["seconds"],
        result["messages"] / max(cpu, 1e-9),
        result.get("p50"),
        result.get("p99"),
    )


def handshake_run(server: Server, parallel: int, size: int, seconds: float) -> Sample:
    """``parallel`` loops of open, one echo of ``size`` bytes, close, for ``seconds``;
    raises RuntimeError if more than 1% of the cycles failed."""
    result, cpu = measure(server, "handshake", server.url, parallel, size, seconds, timeout=90)
    if result["errors"] > result["messages"] / 100:
        raise RuntimeError(f"{server.name}: {result['errors']} failed cycles")
    return Sample(
        result["messages"] / result["seconds"],
        result["messages"] / max(cpu, 1e-9),
        result.get("p50"),
        result.get("p99"),
    )


def scenario_run(server: Server, scenario: Scenario, seconds: float) -> Sample:
    if scenario.kind == "handshake":
        return handshake_run(server, scenario.connections, scenario.size, seconds)
    return echo_run(
        server,
        scenario.connections,
        scenario.inflight,
        scenario.size,
        seconds,
        scenario.mode,
    )


def idle_run(server: Server, count: int, compress: bool = False) -> float:
    time.sleep(0.5)
    before = rss_bytes(server.process.pid)
    process = subprocess.Popen(
        [
            "node",
            str(BENCH / "loadgen.js"),
            "idle",
            server.url,
            str(count),
            "8",
            str(int(compress)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    opened = int(line[1])
    time.sleep(3)  # let the server settle with every connection idle
    after = rss_bytes(server.process.pid)
    process.wait(timeout=60)
    process.stdout.close()
    if opened < count * 0.99:
        raise RuntimeError(f"{server.name}: only {opened} of {count} connections opened")
    return (after - before) / opened


def rotated(servers: list[str], round_: int) -> list[str]:
    """``servers`` starting at a different one each round, so no server always runs
    first (or right after the same one)."""
    shift = round_ % len(servers)
    return servers[shift:] + servers[:shift]


def versions(servers: list[str]) -> str:
    """The geventws commit and the versions of Python and of the software behind
    ``servers``."""
    revision = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    parts = [f"geventws at {revision}"] if revision else []
    if BASELINE is not None and "geventws-baseline" in servers:
        base = subprocess.run(
            ["git", "-C", BASELINE, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        parts.append(f"geventws-baseline at {base or BASELINE}")
    parts.append(f"Python {platform.python_version()}")
    for name, dist in [
        ("geventws", "geventws"),
        ("geventws", "gevent"),
        ("gevent-ceiling", "gevent"),
        ("picows", "picows"),
        ("picows", "aiofastnet"),
        ("gevent-websocket", "gevent-websocket"),
        ("websockets", "websockets"),
    ]:
        if any(s.startswith(name) for s in servers):
            try:
                part = f"{dist} {metadata.version(dist)}"
            except metadata.PackageNotFoundError:
                continue
            if part not in parts:
                parts.append(part)
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    modules = [
        f"{name} {json.loads((BENCH / 'node_modules' / name / 'package.json').read_text())['version']}"
        for name in ("ws", "bufferutil")
        if (BENCH / "node_modules" / name).exists()
    ]
    parts.append(f"Node {node.stdout.strip().lstrip('v')} with {' and '.join(modules)}")
    return ", ".join(parts)


def report(caption: str, header: list[str], rows: list[list[str]], path: Optional[Path]) -> None:
    """Print ``caption`` and an RST simple table of ``rows``; write both to ``path``.
    Columns empty in every row are left out."""
    keep = [i for i in range(len(header)) if any(row[i] for row in rows)]
    header = [header[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    text = "\n".join([caption, "", rule, line(header), rule, *map(line, rows), rule, ""])
    print()
    print(text)
    if path is not None:
        path.write_text(text)


def milliseconds(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def result_row(
    label: str, name: str, samples: list[Sample], ours: Optional[float], unit: str = ""
) -> list[str]:
    """The medians of ``samples`` as a table row; ``ours`` is geventws' median per
    CPU-second, for the ratio column (None in geventws' own row)."""
    per_cpu = statistics.median(s.per_cpu for s in samples)
    p50s = [s.p50 for s in samples if s.p50 is not None]
    p99s = [s.p99 for s in samples if s.p99 is not None]
    return [
        label,
        name,
        unit,
        f"{statistics.median(s.rate for s in samples):,.0f}",
        f"{per_cpu:,.0f}",
        "",
        milliseconds(statistics.median(p50s) if p50s else None),
        milliseconds(statistics.median(p99s) if p99s else None),
        "" if ours is None else f"{ours / per_cpu:.2f}x",
    ]


RESULT_HEADER = [
    "scenario",
    "server",
    "unit",
    "per second",
    "per server CPU-s",
    "MB per server CPU-s",
    "p50 ms",
    "p99 ms",
    "geventws ratio (CPU)",
]


def echo_rows(
    results: dict[tuple[str, str], list[Sample]],
    scenarios: list[str],
    servers: list[str],
    memory: dict[str, list[float]],
    units: Optional[dict[str, str]] = None,
    mb_sizes: Optional[dict[str, int]] = None,
) -> tuple[list[str], list[list[str]]]:
    """The table of medians: rate, rate per server CPU-second (and in MB for the
    scenarios in ``mb_sizes``, message sizes in bytes), latencies and geventws' ratio
    per CPU-second for each scenario and server, then idle memory per connection."""
    units = units or {}
    mb_sizes = mb_sizes or {}
    rows = []
    for scenario in scenarios:
        ours = (
            statistics.median(s.per_cpu for s in results[(scenario, "geventws")])
            if "geventws" in servers
            else None
        )
        for name in servers:
            samples = results[(scenario, name)]
            row = result_row(
                scenario,
                name,
                samples,
                None if name == "geventws" else ours,
                units.get(scenario, "msg"),
            )
            if scenario in mb_sizes:
                per_cpu = statistics.median(s.per_cpu for s in samples)
                row[5] = f"{per_cpu * mb_sizes[scenario] / 1e6:,.0f}"
            rows.append(row)
    for name, values in memory.items():
        median = statistics.median(values) / 1024
        rows.append(["idle memory", name, "KiB/conn", f"{median:.1f}", "", "", "", "", ""])
    return RESULT_HEADER, rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=10000, help="idle connections (0 to skip)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--baseline", help="checkout run as geventws-baseline")
    parser.add_argument(
        "--write-results", action="store_true", help="write scripts/bench/RESULTS.rst"
    )
    args = parser.parse_args()
    global BASELINE  # noqa: PLW0603 - set once, from the command line
    BASELINE = args.baseline
    ensure_node_modules()
    raise_fd_limit()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for name in scenarios:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    for name in servers:
        if name not in SERVERS and name not in OTHER_SERVERS:
            parser.error(f"unknown server {name!r}")
    results: dict[tuple[str, str], list[Sample]] = {}
    for round_ in range(args.rounds):
        for scenario in scenarios:
            for name in rotated(servers, round_):
                server = Server(name)
                try:
                    sample = scenario_run(server, SCENARIOS[scenario], args.seconds)
                finally:
                    server.stop()
                results.setdefault((scenario, name), []).append(sample)
                print(
                    f"round {round_ + 1} {scenario:9} {name:22} {sample.rate:10,.0f}/s "
                    f"{sample.per_cpu:10,.0f}/CPU-s p50 {milliseconds(sample.p50)} ms "
                    f"p99 {milliseconds(sample.p99)} ms",
                    flush=True,
                )
    memory: dict[str, list[float]] = {}
    if args.idle:
        for round_ in range(max(1, min(args.rounds, 2))):
            for name in rotated(servers, round_):
                server = Server(name)
                try:
                    value = idle_run(server, args.idle)
                finally:
                    server.stop()
                memory.setdefault(name, []).append(value)
                print(f"idle {name:22} {value / 1024:.1f} KiB/connection", flush=True)

    command = (
        f"python scripts/bench_echo.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--idle {args.idle} --servers {','.join(servers)} --scenarios {','.join(scenarios)}"
    )
    if BASELINE is not None:
        command += " --baseline CHECKOUT"
    caption = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, loopback, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s, medians, "
        f"``{command}``; {versions(servers)}."
    )
    units = {name: SCENARIOS[name].unit for name in scenarios}
    mb_sizes = {name: SCENARIOS[name].size for name in scenarios if name == "large"}
    header, rows = echo_rows(results, scenarios, servers, memory, units, mb_sizes)
    path = BENCH / "RESULTS.rst" if args.write_results else None
    report(caption, header, rows, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
