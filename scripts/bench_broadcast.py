#!/usr/bin/env python3
"""Broadcast benchmark: geventws.broadcast() against its peers, per second of server
CPU, in the same run.

Each server relays every message a client sends to every connected client
(scripts/bench/broadcast_app.py, ceiling.py, ws_server.js: each library's natural
broadcast). Node's ws package (scripts/bench/loadgen.js) opens the clients; one of them
publishes messages stamped with their sequence number, keeping 16 in flight (the next
is published as soon as one has reached every client). The load generator records each
message's publish time and measures publish-to-receive latency for every delivery.
Reports deliveries per second, per second of *server* CPU (user + system of the server
process, from /proc, while publishing) and p50/p99 delivery latency: medians of
interleaved rounds (the server order rotates each round), and the ratio geventws /
peer per CPU-second.

Scenarios:
  1000          1,000 clients, 64-byte text messages, 16 in flight
  10000         10,000 clients, 64-byte text messages, 16 in flight
  1000-deflate  1,000 clients that all negotiated permessage-deflate, 1 KiB JSON-like
                text, 16 in flight (servers that implement compression only)

Servers: geventws, gevent-ceiling (the raw gevent ceiling: one blocking sendall per
client of the frames one recv brought), picows, node-ws, gevent-websocket (Nagle on, as
its users have it), websockets; geventws-baseline, an earlier geventws checkout given
with --baseline PATH (see bench_echo.py), for before/after figures in the same run.

Usage: python scripts/bench_broadcast.py [--rounds 3] [--seconds 5]
       [--servers ...] [--scenarios 1000,10000,1000-deflate] [--baseline PATH]
       [--write-results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import bench_echo
from bench_echo import (
    BENCH,
    RESULT_HEADER,
    SERVERS,
    Sample,
    Server,
    ensure_node_modules,
    measure,
    milliseconds,
    python_for,
    raise_fd_limit,
    report,
    result_row,
    rotated,
    versions,
)


class Scenario(NamedTuple):
    clients: int
    inflight: int
    size: int
    compressed: bool


SCENARIOS = {
    "1000": Scenario(1000, 16, 64, False),
    "10000": Scenario(10000, 16, 64, False),
    "1000-deflate": Scenario(1000, 16, 1024, True),
}
#: The servers that implement permessage-deflate.
DEFLATE_SERVERS = {"geventws", "geventws-baseline", "node-ws", "websockets"}


def command_for(compressed: bool) -> Callable[[str, int], list[str]]:
    def command(name: str, port: int) -> list[str]:
        mode = ["deflate"] if compressed else []
        if name == "gevent-ceiling":
            return [sys.executable, str(BENCH / "ceiling.py"), str(port), "broadcast"]
        if name == "node-ws":
            return ["node", str(BENCH / "ws_server.js"), str(port), "broadcast", *mode]
        app = str(BENCH / "broadcast_app.py")
        return [*python_for(name), app, name.removesuffix("-baseline"), str(port), *mode]

    return command


def run(name: str, scenario: Scenario, seconds: float) -> Sample:
    """One measurement; raises RuntimeError if a connection failed or a message
    published over two seconds before the end did not reach every client."""
    server = Server(name, command_for(scenario.compressed))
    try:
        result, cpu = measure(
            server,
            "broadcast",
            server.url,
            scenario.clients,
            scenario.inflight,
            scenario.size,
            seconds,
            int(scenario.compressed),
            timeout=seconds + 150,
        )
    finally:
        server.stop()
    if result["errors"] or result["stalled"]:
        raise RuntimeError(
            f"{name}: {result['errors']} errors, {result['stalled']} messages not delivered"
        )
    return Sample(
        result["deliveries"] / result["seconds"],
        result["deliveries"] / max(cpu, 1e-9),
        result["p50"],
        result["p99"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    # The echo benchmark's servers but its logging ceiling, which has no broadcast mode.
    parser.add_argument(
        "--servers", default=",".join(s for s in SERVERS if s != "gevent-ceiling-log")
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--baseline", help="checkout run as geventws-baseline")
    parser.add_argument(
        "--write-results", action="store_true", help="write scripts/bench/BROADCAST.rst"
    )
    args = parser.parse_args()
    bench_echo.BASELINE = args.baseline
    ensure_node_modules()
    raise_fd_limit()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for label in scenarios:
        if label not in SCENARIOS:
            parser.error(f"unknown scenario {label!r}")

    def runs_in(label: str) -> list[str]:
        if SCENARIOS[label].compressed:
            return [name for name in servers if name in DEFLATE_SERVERS]
        return servers

    results: dict[tuple[str, str], list[Sample]] = {}
    for round_ in range(args.rounds):
        for label in scenarios:
            for name in rotated(runs_in(label), round_):
                sample = run(name, SCENARIOS[label], args.seconds)
                results.setdefault((label, name), []).append(sample)
                print(
                    f"round {round_ + 1} {label:12} {name:16} {sample.rate:12,.0f} deliveries/s "
                    f"{sample.per_cpu:12,.0f}/CPU-s p50 {milliseconds(sample.p50)} ms "
                    f"p99 {milliseconds(sample.p99)} ms",
                    flush=True,
                )
    command = (
        f"python scripts/bench_broadcast.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--servers {','.join(servers)} --scenarios {','.join(scenarios)}"
        f"{' --baseline CHECKOUT' if args.baseline else ''}"
    )
    caption = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, loopback, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s, medians, ``{command}``; "
        f"scenario = clients, latency = publish to delivery; {versions(servers)}."
    )
    rows = []
    for label in scenarios:
        names = runs_in(label)
        ours = (
            statistics.median(s.per_cpu for s in results[(label, "geventws")])
            if "geventws" in names
            else None
        )
        for name in names:
            peer_ours = None if name == "geventws" else ours
            rows.append(result_row(label, name, results[(label, name)], peer_ours, "deliveries"))
    path = BENCH / "BROADCAST.rst" if args.write_results else None
    report(caption, RESULT_HEADER, rows, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
