"""Run every fuzz target: its seed corpus in-process, then a bounded atheris run.

The replay needs nothing but the package (inputs are decoded by the fallback data
provider when atheris is missing). The atheris runs are bounded by a number of
executions (``-runs``), not by time, and each fails on any crash, printing the
reproducer. Without atheris they are skipped, except in CI (``GEVENTWS_CI=1``), where
a missing atheris is a failure: the fuzzing must not vanish silently.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from .common import HAVE_ATHERIS, FallbackProvider
from .run import CORPUS, ROOT, TARGETS, libfuzzer_command, summary

HERE = Path(__file__).parent
#: A deadline for one bounded run, far above its expected duration; not a measurement.
RUN_DEADLINE = 600


def require_atheris() -> None:
    if HAVE_ATHERIS:
        return
    message = "atheris is not installed (pip install atheris; see tests/fuzz/README.rst)"
    if os.environ.get("GEVENTWS_CI") == "1":
        pytest.fail(f"{message}: CI must fuzz")
    pytest.skip(message)


def test_every_target_has_a_module_and_seeds() -> None:
    modules = {path.stem.removeprefix("fuzz_") for path in HERE.glob("fuzz_*.py")}
    assert modules == set(TARGETS) == {path.name for path in CORPUS.iterdir()}
    for target in TARGETS:
        assert len(list((CORPUS / target).iterdir())) >= 10, target
    total = sum(path.stat().st_size for path in CORPUS.rglob("*") if path.is_file())
    assert total < 1_000_000


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seed_corpus_replays(target: str) -> None:
    """Every seed passes the target's invariants (no atheris needed)."""
    module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
    seeds = sorted((CORPUS / target).iterdir())
    for seed in seeds:
        try:
            module.TestOneInput(seed.read_bytes())
        except Exception as exc:
            raise AssertionError(f"seed {seed} fails {target}: {exc!r}") from exc


def test_fallback_provider_consumes_like_atheris() -> None:
    """The replay without atheris decodes every input exactly as atheris does."""
    require_atheris()
    import atheris

    rng = random.Random(1234)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 40))
        ours, theirs = FallbackProvider(data), atheris.FuzzedDataProvider(data)
        for _ in range(12):
            if rng.random() < 0.5:
                lo = rng.choice([-1, 0, 1, 8, 9])
                hi = lo + rng.choice([0, 1, 7, 255, 256, 1024, 65535, 70000, 2**40])
                assert ours.ConsumeIntInRange(lo, hi) == theirs.ConsumeIntInRange(lo, hi)
            else:
                count = rng.randrange(0, 20)
                assert ours.ConsumeBytes(count) == theirs.ConsumeBytes(count)
            assert ours.remaining_bytes() == theirs.remaining_bytes()


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_bounded_run(target: str, tmp_path: Path) -> None:
    """Fuzz ``target`` from its seeds for a fixed number of executions: no crash."""
    require_atheris()
    runs = TARGETS[target]
    seed = os.environ.get("GEVENTWS_FUZZ_SEED")  # to replay a run: its seed is reported
    result = subprocess.run(
        [
            *libfuzzer_command(target, tmp_path),
            f"-runs={runs}",
            *([f"-seed={seed}"] if seed else []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE,
        check=False,
    )
    crashes = sorted(str(path) for path in (tmp_path / "crashes").iterdir())
    lines = [line for line in result.stderr.splitlines() if "INFO: Instrumenting" not in line]
    # The Python traceback and libFuzzer's reproducer (with the input in base64).
    start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), None)
    seeded = re.search(r"^INFO: Seed: (\d+)", result.stderr, re.MULTILINE)
    report = "\n".join(
        [f"GEVENTWS_FUZZ_SEED={seeded.group(1) if seeded else '?'} replays this run"]
        + (lines[start:] if start is not None else lines[-40:])
    )
    assert result.returncode == 0 and not crashes, f"{target} crashed ({crashes}):\n{report}"
    # libFuzzer may overshoot -runs by one (it checks the bound between mutations).
    done = re.search(r"^Done (\d+) runs", result.stderr, re.MULTILINE)
    assert done is not None and runs <= int(done.group(1)) <= runs + 1, report
    print(f"{target}: {summary(result.stderr)}")
