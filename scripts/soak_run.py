"""Soak test: one ``geventws serve`` process under a mix of clients for N minutes.

    .venv/bin/python scripts/soak [--minutes 10] [--seconds S] [--echo 6] ...

The server runs scripts/soak_app.py (echo, topic subscribe/publish through
``geventws.pubsub.Topics``, a stats endpoint) with ``--send-timeout 5
--handshake-timeout 2``. Client threads (scripts/soak_peers.py), all on loopback:
well-behaved echo clients, subscribers and publishers checking every message and its
order; churn (clean, FIN, reset); subscribers that come and go; slow readers (must be
skipped and closed); abrupt disconnects mid-handshake, mid-frame, mid-message;
malformed handshakes and frames (each answer checked); slowloris heads.

A warm-up phase runs the same mix first; the server's descriptors, live greenlets,
objects tracked by its garbage collector (after a collection) and resident memory are
then taken as the baseline, the soak runs, every client stops, and the server must come
back to the baseline: the same descriptors, no more greenlets, objects within
``--objects-growth`` and memory within ``--rss-growth`` MiB (resident memory doesn't
shrink back entirely: the allocator keeps some of what the largest messages took). Any violation (a lost, wrong or reordered message for a
well-behaved client, a wrong answer to a malformed one, a slow reader left open, a
leak, an ERROR in the server's log, an unclean stop) makes the exit status 1. A summary
table is printed either way.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import soak_peers
from soak_peers import Context, Tally

SCRIPTS = Path(__file__).resolve().parent

SEND_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 2.0
MAX_SIZE = 2**20


# -- the server process ---------------------------------------------------------------------


class Server:
    """``geventws serve soak_app:handle`` on a free port, its log in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
        }
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "geventws", "serve", "soak_app:handle",
                    "--port", "0",
                    "--send-timeout", str(SEND_TIMEOUT),
                    "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
                    "--close-timeout", "3",
                    "--ping-interval", "5",
                    "--ping-timeout", "10",
                    "--max-size", str(MAX_SIZE),
                ],
                stderr=stderr,
                env=env,
            )  # fmt: skip
        self.pid = self.process.pid
        self.port = 0
        deadline = time.monotonic() + 30
        while not self.port:
            match = re.search(r"listening on wss?://127\.0\.0\.1:(\d+)", log.read_text())
            if match:
                self.port = int(match.group(1))
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            else:
                time.sleep(0.05)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User and system CPU time the server used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM (graceful stop); the exit status, or ``None`` if it had to be killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


# -- watching the server ----------------------------------------------------------------------


class Watch:
    """Samples the server's descriptors and memory every second, its greenlets every
    five, and keeps the peaks."""

    def __init__(self, server: Server, ctx: Context) -> None:
        self.server, self.ctx = server, ctx
        self.peak: dict[str, int] = {"fds": 0, "rss_kib": 0, "greenlets": 0, "objects": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def _run(self) -> None:
        ticks = 0
        while not self.stop.wait(1.0):
            try:
                self._note("fds", self.server.fds())
                self._note("rss_kib", self.server.rss_kib())
                if ticks % 5 == 0:
                    stats = soak_peers.server_stats(self.ctx)
                    self._note("greenlets", stats["greenlets"])
                    self._note("objects", stats["objects"])
            except (OSError, ValueError) as exc:
                self.ctx.tally.violation("watch", f"sampling failed: {exc!r}")
            except Exception as exc:  # websocket-client errors: the stats endpoint failed
                self.ctx.tally.violation("watch", f"stats failed: {exc!r}")
            ticks += 1

    def _note(self, key: str, value: int) -> None:
        self.peak[key] = max(self.peak[key], value)


def settle(server: Server, ctx: Context, fds: Optional[int], timeout: float = 30) -> dict[str, Any]:
    """Wait until the server runs no handler but the stats one, has no subscriber, and
    (if given) is back to ``fds`` descriptors; return its last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = soak_peers.server_stats(ctx)
        quiet = stats["running"] == {"/stats": 1} and stats["subscribers"] == 0
        if quiet and (fds is None or server.fds() <= fds):
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.25)


# -- one phase of load --------------------------------------------------------------------------


def run_phase(ctx: Context, seconds: float, args: argparse.Namespace) -> None:
    """Every role for ``seconds``, then stop them all (publishers first, so that
    subscribers get their END markers)."""
    ctx.stop.clear()
    ctx.publishers_done.clear()
    ctx.finished.clear()
    ready = [threading.Event() for _ in range(args.subscribers)]
    subscribers = [
        threading.Thread(
            target=soak_peers.subscriber, args=(ctx, i, ready[i]), name=f"subscriber-{i}"
        )
        for i in range(args.subscribers)
    ]
    for thread in subscribers:
        thread.start()
    for event in ready:
        if not event.wait(15):
            ctx.tally.violation("subscriber", "not open within 15 s")
    publishers = [
        threading.Thread(target=soak_peers.publisher, args=(ctx, i), name=f"publisher-{i}")
        for i in range(args.publishers)
    ]
    roles: list[tuple[Callable[..., None], int]] = [
        (soak_peers.echo, args.echo),
        (soak_peers.churning_subscriber, args.sub_churn),
        (soak_peers.churn, args.churn),
        (soak_peers.slow_reader, args.slow),
        (soak_peers.abrupt, args.abrupt),
        (soak_peers.malformed, args.malformed),
        (soak_peers.slowloris, 1),
    ]
    others = [
        threading.Thread(target=role, args=(ctx, i), name=f"{role.__name__}-{i}")
        for role, count in roles
        for i in range(count)
    ]
    for thread in publishers + others:
        thread.start()
    try:
        ctx.stop.wait(seconds)
    finally:
        ctx.stop.set()
        deadline = time.monotonic() + 60
        for thread in publishers:
            thread.join(max(0.1, deadline - time.monotonic()))
        ctx.publishers_done.set()
        for thread in subscribers + others:
            thread.join(max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in publishers + subscribers + others if t.is_alive()]
        if stuck:
            ctx.tally.violation("soak", f"threads still running 60 s after the stop: {stuck}")


# -- the report -----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="length of the soak (default 10)"
    )
    parser.add_argument("--seconds", type=float, help="length in seconds instead (short checks)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of warm-up before the baseline"
    )
    parser.add_argument("--echo", type=int, default=6, help="well-behaved echo clients")
    parser.add_argument("--subscribers", type=int, default=4, help="long-lived subscribers")
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=40.0, help="messages per second per publisher"
    )
    parser.add_argument("--sub-churn", type=int, default=2, help="subscribers that come and go")
    parser.add_argument("--churn", type=int, default=4, help="connect/echo/leave loops")
    parser.add_argument(
        "--slow", type=int, default=2, help="slow readers (half on /echo, half on /subscribe)"
    )
    parser.add_argument("--abrupt", type=int, default=2)
    parser.add_argument("--malformed", type=int, default=2)
    parser.add_argument(
        "--stall-limit", type=float, default=10.0, help="longest wait for a well-behaved reply"
    )
    parser.add_argument(
        "--rss-growth",
        type=float,
        default=16.0,
        help="MiB of resident memory the server may keep over its baseline (default 16)",
    )
    parser.add_argument(
        "--objects-growth",
        type=int,
        default=2000,
        help="objects tracked by the server's gc it may keep over its baseline (default 2000)",
    )
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60

    workdir = Path(tempfile.mkdtemp(prefix="geventws-soak-"))
    log = args.log or workdir / "server.log"
    server = Server(log)
    tally = Tally()
    ctx = Context(
        port=server.port,
        stop=threading.Event(),
        tally=tally,
        send_timeout=SEND_TIMEOUT,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        max_size=MAX_SIZE,
        stall_limit=args.stall_limit,
        publish_rate=args.rate,
    )
    watch = Watch(server, ctx)
    exit_status: Optional[int] = None
    try:
        print(f"server pid {server.pid} on port {server.port}; log {log}", flush=True)
        print(f"warm-up {args.warmup:g} s", flush=True)
        run_phase(ctx, args.warmup, args)
        settle(server, ctx, None)
        time.sleep(1)
        base_stats = settle(server, ctx, None)
        baseline = {
            "fds": server.fds(),
            "greenlets": base_stats["greenlets"],
            "objects": base_stats["objects"],
            "rss_kib": server.rss_kib(),
        }
        warmup_counts = {role: dict(counts) for role, counts in tally.counts.items()}
        tally.counts.clear()
        tally.round_trips.clear()
        print(f"baseline {baseline}; soak {seconds:g} s", flush=True)
        watch.thread.start()
        started, cpu_before, own_before = time.monotonic(), server.cpu_seconds(), os.times()
        run_phase(ctx, seconds, args)
        elapsed = time.monotonic() - started
        server_cpu = server.cpu_seconds() - cpu_before
        own_cpu = sum(os.times()[:2]) - sum(own_before[:2])
        watch.stop.set()
        watch.thread.join(10)
        end_stats = settle(server, ctx, baseline["fds"])
        end = {
            "fds": server.fds(),
            "greenlets": end_stats["greenlets"],
            "objects": end_stats["objects"],
            "rss_kib": server.rss_kib(),
        }
    finally:
        ctx.stop.set()
        watch.stop.set()
        exit_status = server.stop()

    # -- checks at the end
    if end["fds"] > baseline["fds"]:  # (fewer: one still closing at the baseline)
        tally.violation(
            "server", f"descriptors {baseline['fds']} at baseline, {end['fds']} at the end"
        )
    if end["greenlets"] > baseline["greenlets"]:
        tally.violation(
            "server",
            f"greenlets {baseline['greenlets']} at baseline, {end['greenlets']} at the end",
        )
    if end_stats["running"] != {"/stats": 1} or end_stats["subscribers"] != 0:
        tally.violation(
            "server",
            f"still running at the end: {end_stats['running']}, subscribers {end_stats['subscribers']}",
        )
    if end["objects"] > baseline["objects"] + args.objects_growth:
        tally.violation(
            "server",
            f"objects tracked by the gc: {baseline['objects']} at baseline, {end['objects']} "
            f"at the end (after a collection)",
        )
    growth_mib = (end["rss_kib"] - baseline["rss_kib"]) / 1024
    if growth_mib > args.rss_growth:
        tally.violation(
            "server", f"resident memory grew by {growth_mib:.1f} MiB (bound {args.rss_growth:g})"
        )
    if exit_status != 0:
        tally.violation("server", f"SIGTERM: exit status {exit_status} (None: had to be killed)")
    errors = [
        line for line in log.read_text().splitlines() if " ERROR " in line or "Traceback" in line
    ]
    if errors:
        tally.violation("server", f"{len(errors)} ERROR lines in the log, first: {errors[0]}")

    # -- the report
    rows = [["role", "connections", "messages", "checks", "violations", "notes"]]
    for role in [
        "echo",
        "subscriber",
        "publisher",
        "sub-churn",
        "churn",
        "slow",
        "abrupt",
        "malformed",
        "slowloris",
    ]:
        counts: dict[str, int] = dict(tally.counts.get(role, {}))
        notes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if ":" in k)
        rows.append([
            role,
            str(counts.get("connections", 0)),
            str(counts.get("messages", 0)),
            str(counts.get("checks", 0)),
            str(tally.violation_count.get(role, 0)),
            notes,
        ])  # fmt: skip
    for role in sorted(set(tally.violation_count) - {row[0] for row in rows}):
        rows.append([role, "", "", "", str(tally.violation_count[role]), ""])
    print()
    print(
        f"soak: {elapsed:.0f} s after a {args.warmup:g} s warm-up (warm-up counts: {sum(sum(c.values()) for c in warmup_counts.values())} events)"
    )
    print(table(rows))
    print()
    trips = tally.round_trips
    print(
        f"echo round trips (1-4 messages in flight): {len(trips)}, p50 {percentile(trips, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(trips, 0.99) * 1000:.1f} ms, max {max(trips, default=0) * 1000:.1f} ms"
    )
    counters = end_stats["counters"]
    print(
        f"published {counters.get('published', 0)}, deliveries {counters.get('delivered', 0)}, "
        f"not queued (slow, opening or closing subscribers) {counters.get('not_delivered', 0)}"
    )
    print(
        f"CPU: server {server_cpu:.0f} s ({100 * server_cpu / elapsed:.0f}% of a core), "
        f"clients {own_cpu:.0f} s ({100 * own_cpu / elapsed:.0f}%)"
    )
    print(
        "close codes seen by handlers:",
        ", ".join(f"{k} {v}" for k, v in sorted(end_stats["close_codes"].items())),
    )
    print()
    print(table([
        ["server", "baseline", "peak", "end"],
        ["descriptors", str(baseline["fds"]), str(watch.peak["fds"]), str(end["fds"])],
        ["greenlets", str(baseline["greenlets"]), str(watch.peak["greenlets"]), str(end["greenlets"])],
        ["gc objects", str(baseline["objects"]), str(watch.peak["objects"]), str(end["objects"])],
        ["RSS MiB", f"{baseline['rss_kib'] / 1024:.1f}", f"{watch.peak['rss_kib'] / 1024:.1f}", f"{end['rss_kib'] / 1024:.1f}"],
    ]))  # fmt: skip
    print()
    if tally.violation_count:
        print(f"VIOLATIONS: {sum(tally.violation_count.values())}")
        for line in tally.violations:
            print("  " + line)
        return 1
    print("no violation")
    return 0
