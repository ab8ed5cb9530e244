#!/usr/bin/env python3
"""Echo benchmark: geventws against gevent-websocket and websockets, in the same run.

Each server runs in its own process on loopback; Node's ``ws`` package
(scripts/bench/loadgen.js) generates the load. For each scenario and server it reports
messages per second and messages per second of *server* CPU (user + system time of the
server process from /proc): on a 2-core machine the load generator takes a core, so the
per-CPU figure is the fair one. Rounds are interleaved across servers and the table gives
medians, plus the ratio of geventws to each peer.

Scenarios:
  small   32-byte text messages, 100 connections, 16 in flight on each
  large   1 MiB binary messages, 4 connections, 1 in flight on each
  idle    memory per idle connection with 10,000 connections open (RSS delta / count)

Usage: python scripts/bench_echo.py [--rounds 3] [--seconds 5] [--idle 10000]
       [--servers geventws,gevent-websocket,websockets] [--write-results]
Needs: pip install -e '.[bench]'; npm install in scripts/bench (done on first run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def server_command(name: str, port: int, *flags: str) -> list[str]:
    """The command line of the echo server ``name``; ``flags`` are extra ``geventws
    serve`` flags (geventws only)."""
    if name.startswith("geventws"):
        return [
            sys.executable,
            "-m",
            "geventws",
            "serve",
            "geventws.examples.echo:handle",
            "--port",
            str(port),
            "--max-size",
            "64MiB",
            "--log-level",
            "warning",
            *flags,
        ]
    return [sys.executable, str(BENCH / "peers.py"), name, str(port)]


def cpu_seconds(pid: int) -> float:
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


def loadgen(*args: object, timeout: float) -> str:
    out = subprocess.run(
        ["node", str(BENCH / "loadgen.js"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        preexec_fn=raise_fd_limit,
    )
    return out.stdout.strip().splitlines()[-1]


def echo_run(
    server: Server,
    connections: int,
    inflight: int,
    size: int,
    seconds: float,
    mode: str,
    compress: bool = False,
) -> tuple[float, float]:
    cpu0 = cpu_seconds(server.process.pid)
    result = json.loads(
        loadgen(
            "echo",
            server.url,
            connections,
            inflight,
            size,
            seconds,
            mode,
            int(compress),
            timeout=seconds + 90,
        )
    )
    cpu1 = cpu_seconds(server.process.pid)
    if result["errors"]:
        raise RuntimeError(f"{server.name}: {result['errors']} errors")
    rate = result["messages"] / result["seconds"]
    per_cpu = result["messages"] / max(cpu1 - cpu0, 1e-9)
    return rate, per_cpu


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
    if opened < count * 0.99:
        raise RuntimeError(f"{server.name}: only {opened} of {count} connections opened")
    return (after - before) / opened


def report(caption: str, header: list[str], rows: list[list[str]], path: Optional[Path]) -> None:
    """Print ``caption`` and an RST simple table of ``rows``; write both to ``path``."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    text = "\n".join([caption, "", rule, line(header), rule, *map(line, rows), rule, ""])
    print()
    print(text)
    if path is not None:
        path.write_text(text)


def echo_rows(
    results: dict[tuple[str, str], list[tuple[float, float]]],
    scenarios: list[str],
    servers: list[str],
    memory: dict[str, list[float]],
) -> tuple[list[str], list[list[str]]]:
    """The table of medians: rate, rate per server CPU-second and geventws' ratio for
    each scenario and server, then idle memory per connection."""
    header = ["scenario", "server", "msg/s", "msg per server CPU-s", "geventws ratio (CPU)"]
    rows = []
    for scenario in scenarios:
        ours = (
            statistics.median(r[1] for r in results[(scenario, "geventws")])
            if "geventws" in servers
            else None
        )
        for name in servers:
            rate = statistics.median(r[0] for r in results[(scenario, name)])
            per_cpu = statistics.median(r[1] for r in results[(scenario, name)])
            ratio = "" if ours is None or name == "geventws" else f"{ours / per_cpu:.2f}x"
            rows.append([scenario, name, f"{rate:,.0f}", f"{per_cpu:,.0f}", ratio])
    for name, values in memory.items():
        rows.append(
            ["idle memory", name, f"{statistics.median(values) / 1024:.1f} KiB/conn", "", ""]
        )
    return header, rows


SCENARIOS = {
    "small": dict(connections=100, inflight=16, size=32, mode="text"),
    "large": dict(connections=4, inflight=1, size=2**20, mode="binary"),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=10000, help="idle connections (0 to skip)")
    parser.add_argument("--servers", default="geventws,gevent-websocket,websockets")
    parser.add_argument("--scenarios", default="small,large")
    parser.add_argument(
        "--write-results", action="store_true", help="write scripts/bench/RESULTS.rst"
    )
    args = parser.parse_args()
    if not (BENCH / "node_modules" / "ws").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=BENCH, check=True)
    raise_fd_limit()
    servers = args.servers.split(",")
    scenarios = [s for s in args.scenarios.split(",") if s]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for scenario in scenarios:
            for name in servers:
                server = Server(name)
                try:
                    results.setdefault((scenario, name), []).append(
                        echo_run(server, seconds=args.seconds, **SCENARIOS[scenario])  # type: ignore[arg-type]
                    )
                finally:
                    server.stop()
                rate, per_cpu = results[(scenario, name)][-1]
                print(
                    f"round {round_ + 1} {scenario:5} {name:16} {rate:10.0f} msg/s {per_cpu:10.0f} msg/CPU-s",
                    flush=True,
                )
    memory: dict[str, list[float]] = {}
    if args.idle:
        for name in servers:
            for _ in range(max(1, min(args.rounds, 2))):
                server = Server(name)
                try:
                    memory.setdefault(name, []).append(idle_run(server, args.idle))
                finally:
                    server.stop()
                print(f"idle {name:16} {memory[name][-1] / 1024:.1f} KiB/connection", flush=True)

    caption = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, loopback, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s, medians "
        f"(``python scripts/bench_echo.py --rounds {args.rounds} --seconds {args.seconds:g} --idle {args.idle}``)."
    )
    header, rows = echo_rows(results, scenarios, servers, memory)
    report(caption, header, rows, BENCH / "RESULTS.rst" if args.write_results else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
