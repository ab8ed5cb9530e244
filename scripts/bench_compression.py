#!/usr/bin/env python3
"""Echo benchmark with permessage-deflate: geventws against websockets, same run.

Both servers compress at equal settings: 12-bit windows both ways, zlib memory level 5,
zlib's default level, context takeover, every message compressed (geventws runs with
``--compression-threshold 0``; websockets has no threshold). Node's ``ws`` generates
the load with compression on (threshold 0). The payloads are 64 different JSON-like
texts per size, so context takeover helps the way it does in real traffic.

Scenarios:
  json-1k   1 KiB JSON-like text, 100 connections, 4 in flight on each
  json-16k  16 KiB JSON-like text, 16 connections, 2 in flight on each
  idle      memory per idle connection, 5,000 connections that each exchanged one
            1 KiB compressed message first (so both compression contexts exist), and
            geventws without compression for reference

With ``--baseline PATH``, an earlier geventws checkout runs beside them as
geventws-baseline (see bench_echo.py), for before/after figures in the same run.

Usage: python scripts/bench_compression.py [--rounds 3] [--seconds 5] [--idle 5000]
       [--baseline PATH] [--write-results]
"""

from __future__ import annotations

import argparse
import os
import time

import bench_echo
from bench_echo import (
    BENCH,
    Sample,
    Server,
    echo_rows,
    echo_run,
    ensure_node_modules,
    idle_run,
    raise_fd_limit,
    report,
    rotated,
    server_command,
)

SCENARIOS = {
    "json-1k": dict(connections=100, inflight=4, size=1024, mode="json"),
    "json-16k": dict(connections=16, inflight=2, size=16384, mode="json"),
}


def command(name: str, port: int) -> list[str]:
    if name == "geventws (no compression)":
        return server_command(name, port, "--compression", "none")
    if name in ("geventws", "geventws-baseline"):
        return server_command(name, port, "--compression-threshold", "0")
    return server_command("websockets-deflate", port)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (0 to skip)")
    parser.add_argument("--baseline", help="checkout run as geventws-baseline")
    parser.add_argument(
        "--write-results", action="store_true", help="write scripts/bench/COMPRESSION.rst"
    )
    args = parser.parse_args()
    ensure_node_modules()
    raise_fd_limit()
    servers = ["geventws", "websockets"]
    if args.baseline:
        bench_echo.BASELINE = args.baseline
        servers.append("geventws-baseline")
    results: dict[tuple[str, str], list[Sample]] = {}
    for round_ in range(args.rounds):
        for scenario, params in SCENARIOS.items():
            for name in rotated(servers, round_):
                server = Server(name, command)
                try:
                    result = echo_run(server, seconds=args.seconds, compress=True, **params)  # type: ignore[arg-type]
                finally:
                    server.stop()
                results.setdefault((scenario, name), []).append(result)
                print(
                    f"round {round_ + 1} {scenario:8} {name:10} {result.rate:10.0f} msg/s "
                    f"{result.per_cpu:10.0f} msg/CPU-s",
                    flush=True,
                )
    memory: dict[str, list[float]] = {}
    if args.idle:
        for _ in range(max(1, min(args.rounds, 2))):
            for name in [*servers, "geventws (no compression)"]:
                server = Server(name, command)
                try:
                    value = idle_run(server, args.idle, compress=True)
                finally:
                    server.stop()
                memory.setdefault(name, []).append(value)
                print(f"idle {name:26} {value / 1024:.1f} KiB/connection", flush=True)

    caption = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, loopback, "
        f"compression on at equal settings, {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s, medians (``python scripts/bench_compression.py --rounds "
        f"{args.rounds} --seconds {args.seconds:g} --idle {args.idle}"
        f"{' --baseline CHECKOUT' if args.baseline else ''}``)."
    )
    header, rows = echo_rows(results, list(SCENARIOS), servers, memory)
    report(caption, header, rows, BENCH / "COMPRESSION.rst" if args.write_results else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
