"""``scripts/soak`` itself works: a short run of every kind of client against a real
``geventws serve`` ends with no violation (the ten-minute run is the same code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_soak_script_short_run_reports_no_violation() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak"), "--seconds", "8", "--warmup", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "soak: " in output and "violations" in output, output
    # Every role ran: a role's row has a non-zero connection count.
    rows = dict(re.findall(r"^([a-z-]+) +(\d+) +\d+ +\d+ +\d+", output, re.MULTILINE))
    for role in ("echo", "subscriber", "publisher", "churn", "slow", "malformed"):
        assert int(rows.get(role, 0)) > 0, output
