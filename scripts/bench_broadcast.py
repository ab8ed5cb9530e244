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

from bench_echo import BENCH, Server, cpu_seconds, raise_fd_limit, report

SCENARIOS = [(1000, 200), (10000, 20)]  # (clients, messages)


def command(name: str, port: int) -> list[str]:
    return [sys.executable, str(BENCH / "broadcast_app.py"), name, str(port)]


def run(name: str, clients: int, messages: int) -> tuple[float, float]:
    server = Server(name, command)
    try:
        process = subprocess.Popen(
            [
                "node",
                str(BENCH / "loadgen.js"),
                "broadcast",
                server.url,
                str(clients),
                str(messages),
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
        for clients, messages in SCENARIOS:
            for name in ("geventws", "websockets"):
                rate, per_cpu = run(name, clients, messages)
                results.setdefault((clients, name), []).append((rate, per_cpu))
                print(
                    f"round {round_ + 1} {clients:6} clients {name:10} {rate:12,.0f} deliveries/s"
                    f" {per_cpu:12,.0f} per server CPU-s",
                    flush=True,
                )
    caption = (
        f"Measured {time.strftime('%Y-%m-%d')}, loopback, {args.rounds} interleaved rounds, medians "
        f"(``python scripts/bench_broadcast.py --rounds {args.rounds}``)."
    )
    header = ["clients", "server", "deliveries/s", "per server CPU-second", "geventws ratio (CPU)"]
    rows = []
    for clients, _ in SCENARIOS:
        ours, theirs = (
            [statistics.median(r[i] for r in results[(clients, name)]) for i in (0, 1)]
            for name in ("geventws", "websockets")
        )
        rows.append([str(clients), "geventws", f"{ours[0]:,.0f}", f"{ours[1]:,.0f}", ""])
        rows.append(
            [
                str(clients),
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
