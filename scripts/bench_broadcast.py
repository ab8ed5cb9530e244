#!/usr/bin/env python3
"""Broadcast benchmark: geventws.broadcast() against websockets' broadcast() on its
asyncio server, in the same run.

For 1,000 and 10,000 connected clients (Node's ws package, scripts/bench/loadgen.js),
one client asks the server to broadcast 64-byte messages; the load generator times
from the request to the last delivery. Reports deliveries per second (medians of the
interleaved rounds) and the ratio geventws / websockets.

Usage: python scripts/bench_broadcast.py [--rounds 3] [--write-results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Callable

from bench_echo import BENCH, Server, cpu_seconds, raise_fd_limit, report

#: (label, clients, messages, compressed): 64-byte messages, then 1 KiB JSON-like
#: messages to clients that all negotiated permessage-deflate.
SCENARIOS = [
    ("1000", 1000, 200, False),
    ("10000", 10000, 20, False),
    ("1000 deflate", 1000, 50, True),
]


def command_for(compressed: bool) -> Callable[[str, int], list[str]]:
    def command(name: str, port: int) -> list[str]:
        mode = ["deflate"] if compressed else []
        return [sys.executable, str(BENCH / "broadcast_app.py"), name, str(port), *mode]

    return command


def run(name: str, clients: int, messages: int, compressed: bool) -> tuple[float, float]:
    server = Server(name, command_for(compressed))
    try:
        process = subprocess.Popen(
            [
                "node",
                str(BENCH / "loadgen.js"),
                "broadcast",
                server.url,
                str(clients),
                str(messages),
                str(int(compressed)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open"
        cpu0 = cpu_seconds(server.process.pid)
        result = json.loads(process.stdout.readline())
        cpu1 = cpu_seconds(server.process.pid)
        process.wait(timeout=60)
    finally:
        server.stop()
    if not result["complete"]:
        raise RuntimeError(f"{name}: only {result['deliveries']} of {clients * messages} delivered")
    return result["deliveries"] / result["seconds"], result["deliveries"] / max(cpu1 - cpu0, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for label, clients, messages, compressed in SCENARIOS:
            for name in ("geventws", "websockets"):
                rate, per_cpu = run(name, clients, messages, compressed)
                results.setdefault((label, name), []).append((rate, per_cpu))
                print(
                    f"round {round_ + 1} {label:12} clients {name:10} {rate:12,.0f} "
                    f"deliveries/s {per_cpu:12,.0f} per server CPU-s",
                    flush=True,
                )
    caption = (
        f"Measured {time.strftime('%Y-%m-%d')}, loopback, {args.rounds} interleaved rounds, medians "
        f"(``python scripts/bench_broadcast.py --rounds {args.rounds}``)."
    )
    header = ["clients", "server", "deliveries/s", "per server CPU-second", "geventws ratio (CPU)"]
    rows = []
    for label, *_ in SCENARIOS:
        ours, theirs = (
            [statistics.median(r[i] for r in results[(label, name)]) for i in (0, 1)]
            for name in ("geventws", "websockets")
        )
        rows.append([label, "geventws", f"{ours[0]:,.0f}", f"{ours[1]:,.0f}", ""])
        rows.append(
            [
                label,
                "websockets",
                f"{theirs[0]:,.0f}",
                f"{theirs[1]:,.0f}",
                f"{ours[1] / theirs[1]:.2f}x",
            ]
        )
    report(caption, header, rows, BENCH / "BROADCAST.rst" if args.write_results else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
