"""A real browser: headless Chromium against geventws servers on loopback."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

from geventws import Connection, Request

from .browser import chromium

PAGE = """<!doctype html><meta charset="utf-8"><title>geventws compression</title>
<script>
const ws = new WebSocket("ws://127.0.0.1:%(port)d/compression");
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  ws.send(JSON.stringify({extensions: ws.extensions}));
  ws.send("from the browser, κόσμε. ".repeat(2000));
  ws.send(new Uint8Array(70000).map((_, i) => i %% 251));
};
ws.onmessage = (event) => {
  if (typeof event.data === "string") {
    const ok = event.data === "from geventws, κόσμε. ".repeat(3000);
    ws.send(JSON.stringify({text: event.data.length, ok}));
  } else {
    const bytes = new Uint8Array(event.data);
    const ok = bytes.every((b, i) => b === i %% 253);
    ws.send(JSON.stringify({binary: bytes.length, ok}));
  }
};
</script>
"""


def test_chromium_negotiates_permessage_deflate(serve: Any, tmp_path: Path) -> None:
    results: queue.Queue[Any] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        connection.accept()
        results.put(("server extensions", connection.extensions))
        results.put(("hello", json.loads(connection.receive(timeout=30))))
        results.put(("text", connection.receive(timeout=30) == "from the browser, κόσμε. " * 2000))
        data = connection.receive(timeout=30)
        results.put(("binary", data == bytes(i % 251 for i in range(70000))))
        connection.send("from geventws, κόσμε. " * 3000)
        connection.send(bytes(i % 253 for i in range(80000)), binary=True)
        results.put(("echo", json.loads(connection.receive(timeout=30))))
        results.put(("echo", json.loads(connection.receive(timeout=30))))

    server = serve(handler)
    page = tmp_path / "page.html"
    page.write_text(PAGE % {"port": server.port}, encoding="utf-8")
    with chromium(page.as_uri(), tmp_path / "profile"):
        got = [results.get(timeout=60) for _ in range(6)]
    assert got[0][0] == "server extensions"
    agreed = got[0][1]
    # Chrome offers "permessage-deflate; client_max_window_bits"; we bound it to 12.
    assert agreed == "permessage-deflate; client_max_window_bits=12"
    assert got[1] == ("hello", {"extensions": agreed})
    assert got[2] == ("text", True)
    assert got[3] == ("binary", True)
    assert sorted(json.dumps(value, sort_keys=True) for _, value in got[4:]) == [
        json.dumps({"binary": 80000, "ok": True}, sort_keys=True),
        json.dumps({"ok": True, "text": len("from geventws, κόσμε. " * 3000)}, sort_keys=True),
    ]
