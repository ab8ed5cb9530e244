"""A headless Chromium (Debian's ``chromium`` package) for tests that need a real browser.

The browser loads a page and runs its JavaScript; tests observe the results on the
server side, so no browser automation library is needed. Without ``chromium`` installed
the tests are skipped, unless ``GEVENTWS_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes
that a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in containers and CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--mute-audio",
]


def chromium_path() -> str:
    """The browser's path, or skip (fail when the browser is required)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("GEVENTWS_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is required (GEVENTWS_REQUIRE_BROWSER=1) but not installed")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@contextlib.contextmanager
def chromium(url: str, profile: Path, *urls: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a headless Chromium on ``url`` (and more tabs on ``urls``) until the block
    ends; the process is killed and reaped in any case."""
    log = open(profile.with_suffix(".log"), "wb")  # closed in the finally below
    process = subprocess.Popen(
        [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url, *urls],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()
