"""A headless Chromium (Debian's ``chromium`` package) for tests that need a real browser.

The browser loads a page and runs its JavaScript; tests observe the results on the
server side, so no browser automation library is needed. Without ``chromium`` installed
the tests are skipped, unless ``GEVENTWS_CI=1`` (set by ``.ci/run``) makes
that a failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from websockets.sync.client import ClientConnection, connect

from .utils import require

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
    """The browser's path, or skip (fail in CI: see :func:`tests.utils.require`)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    require(False, "chromium is not installed (apt-get install chromium)")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def chromium(url: str, profile: Path, devtools: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """Run a headless Chromium on ``url`` until the block ends; the process is killed
    and reaped in any case. ``devtools`` opens the DevTools protocol on a free port
    (see :func:`devtools_tabs`)."""
    log = open(profile.with_suffix(".log"), "wb")  # closed in the finally below
    extra = ["--remote-debugging-port=0"] if devtools else []
    process = subprocess.Popen(
        [chromium_path(), *CHROMIUM_FLAGS, *extra, f"--user-data-dir={profile}", url],
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


class Tab:
    """One page, driven over the DevTools protocol's WebSocket (websockets' client)."""

    def __init__(self, websocket_url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(websocket_url, max_size=None, compression=None)
        )
        self._ids = itertools.count(1)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        call_id = next(self._ids)
        self.ws.send(
            json.dumps(
                {
                    "id": call_id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        while True:
            answer = json.loads(self.ws.recv(timeout=30))
            if answer.get("id") == call_id:
                result = answer["result"]
                if "exceptionDetails" in result:
                    raise RuntimeError(result["exceptionDetails"])
                return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate ``expression`` until it is truthy (a deadline, not a measurement);
        errors count as false while the page is still loading."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def close(self) -> None:
        self._stack.close()


def devtools_tabs(profile: Path, *urls: str, timeout: float = 30) -> list[Tab]:
    """Tabs of the Chromium using ``profile``: its first page, then one new tab per URL
    in ``urls`` (headless Chromium takes one URL on its command line)."""
    deadline = time.monotonic() + timeout
    port_file = profile / "DevToolsActivePort"
    while True:
        try:
            port = int(port_file.read_text().split()[0])
            pages = _pages(port)
            if pages:
                break
        except (OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium's DevTools did not come up")
        time.sleep(0.1)
    for url in urls:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as answer:
            pages.append(json.load(answer))
    return [Tab(page["webSocketDebuggerUrl"]) for page in pages]


def _pages(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
        return [target for target in json.load(answer) if target.get("type") == "page"]
