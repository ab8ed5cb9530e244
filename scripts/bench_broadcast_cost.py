#!/usr/bin/env python3
"""The Python work of one broadcast delivery, geventws against an earlier checkout.

Runs ``scripts/bench/broadcast_cost.py`` (1,000 connections in one process, the sends
replaced by a no-op, CPU time per delivery) for geventws and, with ``--baseline PATH``,
for the checkout at PATH as geventws-baseline, with and without permessage-deflate,
rounds interleaved; prints the medians and the ratio. No network load and no peers:
this isolates what the profiles of bench_broadcast.py show as the Python share of a
delivery, which the system calls otherwise hide in the noise of a shared machine.

Usage: python scripts/bench_broadcast_cost.py [--rounds 3] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path
from typing import Optional

import bench_echo
from bench_echo import BENCH, python_for, raise_fd_limit, rotated


def run(name: str, deflate: bool) -> float:
    """The per-delivery cost of one run (its best of five), in nanoseconds."""
    command = [*python_for(name), str(BENCH / "broadcast_cost.py")]
    process = subprocess.run(
        command + (["deflate"] if deflate else []),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        preexec_fn=raise_fd_limit,
    )
    if process.returncode != 0:
        raise SystemExit(f"{name} failed:\n{process.stderr}")
    return float(json.loads(process.stdout.splitlines()[-1])["ns_per_delivery"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="checkout run as geventws-baseline")
    args = parser.parse_args()
    if args.baseline is not None:
        baseline = Path(args.baseline).resolve()
        if not (baseline / "geventws" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no geventws checkout there")
        args.baseline = str(baseline)
    bench_echo.BASELINE = args.baseline
    names = ["geventws"] + (["geventws-baseline"] if args.baseline else [])
    results: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(args.rounds):
        for name in rotated(names, round_):
            for deflate in (False, True):
                cost = run(name, deflate)
                results.setdefault((name, deflate), []).append(cost)
                label = "deflate" if deflate else "plain"
                print(f"round {round_ + 1} {label:8} {name:18} {cost:7.0f} ns per delivery")
    for deflate in (False, True):
        ours: Optional[float] = None
        for name in names:
            median = statistics.median(results[(name, deflate)])
            ratio = "" if ours is None else f"  geventws takes {ours / median:.2f}x its time"
            ours = median if ours is None else ours
            label = "deflate" if deflate else "plain"
            print(f"{label:8} {name:18} {median:7.0f} ns per delivery{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
