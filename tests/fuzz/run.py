"""Fuzz targets for as long as asked: ``scripts/fuzz`` runs this module.

``scripts/fuzz --target protocol_server --seconds 600`` fuzzes one target (``--target``
repeats), ``--all`` every target one after the other, each for ``--seconds``. New
inputs grow a corpus outside the repository (``--work``, by default
``~/.cache/geventws-fuzz/<target>/corpus``), next to the committed seeds, which are read
but never written. Crashes land in ``<work>/<target>/crashes/``; their paths are
printed at the end with the command that replays one, and the exit status is 1.
Arguments after ``--`` go to libFuzzer (``-- -jobs=2 -workers=2``, ``-- -dict=...``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"

#: Target name → atheris executions for the bounded CI run: 3-8 s each on one core of
#: a small machine (about 45 s in all with the replay), the slower targets getting fewer.
TARGETS = {
    "protocol_server": 20_000,
    "protocol_client": 15_000,
    "protocol_server_deflate": 15_000,
    "protocol_client_deflate": 12_000,
    "http_request": 70_000,
    "http_response": 100_000,
    "headers": 25_000,
    "uri": 60_000,
}
#: The largest input libFuzzer generates, per target (seeds may be larger).
MAX_LEN = {"http_request": 16384, "http_response": 16384}
DEFAULT_MAX_LEN = 8192

_STATS = re.compile(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+) corp: (\S+)")


def libfuzzer_command(target: str, work: Path, extra: Optional[list[str]] = None) -> list[str]:
    """The command fuzzing ``target`` from its seeds, with new inputs in
    ``work/corpus`` and crashes in ``work/crashes`` (both created)."""
    new = work / "corpus"
    crashes = work / "crashes"
    new.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        f"tests.fuzz.fuzz_{target}",
        str(new),  # the first directory receives new inputs; the seeds stay untouched
        str(CORPUS / target),
        f"-max_len={MAX_LEN.get(target, DEFAULT_MAX_LEN)}",
        f"-artifact_prefix={crashes}/",
        "-timeout=20",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        *(extra or []),
    ]


def summary(log: str) -> str:
    """Executions, coverage and features from a libFuzzer log's last status line."""
    last = None
    for line in log.splitlines():
        match = _STATS.match(line)
        if match:
            last = match
    done = re.search(r"^Done (\d+) runs", log, re.MULTILINE)
    executed = re.search(r"^stat::number_of_executed_units: (\d+)", log, re.MULTILINE)
    parts = []
    if executed or done or last:
        runs = (executed or done or last).group(1)  # type: ignore[union-attr]
        parts.append(f"{runs} runs")
    if last:
        parts.append(f"cov {last.group(2)}, ft {last.group(3)}, corpus {last.group(4)}")
    return "; ".join(parts) or "no statistics (see the log)"


def fuzz(target: str, seconds: int, work: Path, extra: list[str]) -> list[Path]:
    """Fuzz one target for ``seconds``; return the new crash files."""
    directory = work / target
    command = libfuzzer_command(target, directory, [f"-max_total_time={seconds}", *extra])
    log_path = directory / "last.log"
    before = set((directory / "crashes").iterdir())
    print(f"== {target}: {seconds} s, log {log_path}", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - started
    print(f"   {elapsed:.0f} s; {summary(log_path.read_text(errors='replace'))}", flush=True)
    return sorted(set((directory / "crashes").iterdir()) - before)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in args:
        index = args.index("--")
        args, extra = args[:index], args[index + 1 :]
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n")[0])
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--target", action="append", choices=sorted(TARGETS))
    choice.add_argument("--all", action="store_true", help="every target, one after another")
    parser.add_argument("--seconds", type=int, default=600, help="per target (default 600)")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geventws-fuzz",
        help="where corpora grow and crashes land (default ~/.cache/geventws-fuzz)",
    )
    options = parser.parse_args(args)
    targets = sorted(TARGETS) if options.all else options.target
    crashes: list[Path] = []
    for target in targets:
        crashes += fuzz(target, options.seconds, options.work.resolve(), extra)
    if crashes:
        print("crashes (replay one with: python -m tests.fuzz.fuzz_<target> <file>):")
        for path in crashes:
            print(f"  {path}")
        return 1
    print("no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
