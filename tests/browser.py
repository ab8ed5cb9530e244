"""A headless Chromium (Debian's ``chromium`` package) for tests that need a real browser.

The browser loads a page and runs its JavaScript; tests observe the results on the
server side, or drive the page over the DevTools protocol (:class:`Tab`: evaluate
JavaScript, emulate a phone's viewport, click, type, take screenshots), so no browser
automation library is needed. Without ``chromium`` installed the tests are skipped,
unless ``GEVENTWS_CI=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import base64
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

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools protocol method (``"Page.navigate"``, ...) and return its
        result; events that arrive meanwhile are dropped. Raises :class:`RuntimeError`
        with the protocol's error."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.ws.recv(timeout=30))
            if answer.get("id") == call_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]  # type: ignore[no-any-return]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def emulate(self, width: int, height: int, mobile: bool = False, scale: float = 1) -> None:
        """Give the page a viewport of ``width`` x ``height`` CSS pixels; ``mobile``
        as a phone does (the viewport meta tag applies, scrollbars overlay)."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=scale,
            mobile=mobile,
        )

    def navigate(self, url: str, timeout: float = 30) -> None:
        """Load ``url`` in this tab and wait until the document is complete."""
        self.call("Page.navigate", url=url)
        href = json.dumps(url)
        loaded = f"location.href === {href} && document.readyState === 'complete'"
        if not self.wait_for(loaded, timeout):
            raise TimeoutError(f"{url} did not load")

    def click(self, x: float, y: float) -> None:
        """A left click (press and release) at ``x, y`` of the viewport, as a person's."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def click_element(self, selector: str) -> None:
        """Click the middle of the first element matching ``selector``."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        self.click(*box)

    def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element (as an input method would)."""
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> bytes:
        """Save a PNG of the viewport to ``path``; its bytes."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

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
    while True:
        try:
            pages = _pages(devtools_port(profile))
            if pages:
                break
        except (OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium's DevTools did not come up")
        time.sleep(0.1)
    return [Tab(page["webSocketDebuggerUrl"]) for page in pages] + [
        open_tab(profile, url) for url in urls
    ]


def open_tab(profile: Path, url: str) -> Tab:
    """A new tab on ``url`` in the running Chromium using ``profile`` (same cookies and
    ``localStorage``, its own ``sessionStorage``), once :func:`devtools_tabs` saw it up."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{devtools_port(profile)}/json/new?{url}", method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return Tab(json.load(answer)["webSocketDebuggerUrl"])


def devtools_port(profile: Path) -> int:
    """The DevTools port of the Chromium using ``profile`` (OSError, ValueError or
    IndexError until it wrote it)."""
    return int((profile / "DevToolsActivePort").read_text().split()[0])


def _pages(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
        return [target for target in json.load(answer) if target.get("type") == "page"]
