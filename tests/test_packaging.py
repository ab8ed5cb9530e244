"""The package as users get it: ``python -m build`` from this checkout, then each
documented install command in a new virtualenv, and the thing it is for working there;
the sdist unpacked, installed with its test extra, and its own test suite run.

These tests are ``slow`` (pip reaches PyPI; a few minutes in all): ``-m "not slow"``
deselects them. The virtualenvs are made in parallel, once per module, and shared.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import requests
from websockets.sync.client import connect

from .utils import LISTENING, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent

#: Installs the docs show (README, quickstart, how-tos, deployment), each tested below.
DOCUMENTED = {"plain": "", "gunicorn": "[gunicorn]", "flask": "[flask]"}

#: pip's complaints about this machine's own configuration (extra index directories
#: that do not exist), not about the package.
MACHINE_NOISE = re.compile(r"Location '.*' is ignored: it is neither a file nor a directory")

#: What the copy of the checkout leaves out: build products and local state.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", "*.pyc", "*.so",
    "node_modules", "_build", ".mypy_cache", ".ruff_cache", ".pytest_cache", "results",
)  # fmt: skip


def clean_env() -> dict[str, str]:
    """The environment for builds and installs: byte-compiling allowed (setuptools
    warns when ``PYTHONDONTWRITEBYTECODE`` forbids it)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    return env


class Venv:
    """A virtualenv being made in the background: ``python -m venv`` then one
    ``pip install``; :meth:`ready` waits for it and fails with pip's output."""

    def __init__(self, path: Path, *requirement: str) -> None:
        self.path = path
        self.log = path.with_suffix(".log")
        python = shlex.quote(sys.executable)
        here = shlex.quote(str(path))
        script = (
            f"{python} -m venv {here} && "
            f"{here}/bin/python -m pip install --no-input {shlex.join(requirement)}"
        )
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=clean_env()
            )

    def ready(self) -> Venv:
        try:
            code = self.process.wait(timeout=900)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        assert code == 0, self.log.read_text()
        return self

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)


class Dists:
    def __init__(self, directory: Path) -> None:
        source = directory / "source"
        shutil.copytree(ROOT, source, ignore=IGNORED)
        out = directory / "dist"
        result = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=600,
            env=clean_env(),
            check=False,
        )
        self.output = result.stdout + result.stderr
        assert result.returncode == 0, self.output
        (self.sdist,) = out.glob("*.tar.gz")
        (self.wheel,) = out.glob("*.whl")
        self.unpacked = directory / "unpacked"
        with tarfile.open(self.sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12
                archive.extractall(self.unpacked, filter="data")
            else:  # pragma: no cover
                archive.extractall(self.unpacked)
        (self.tree,) = self.unpacked.iterdir()
        self.venvs = {
            name: Venv(directory / f"venv-{name}", f"{self.wheel}{extra}")
            for name, extra in DOCUMENTED.items()
        }
        # As the README says to run the tests: an editable install, which also builds
        # the C accelerator in the tree (the tests import geventws from there).
        self.venvs["sdist"] = Venv(directory / "venv-sdist", "-e", f"{self.tree}[test]")

    def stop(self) -> None:
        for venv in self.venvs.values():
            if venv.process.poll() is None:
                venv.process.kill()
                venv.process.wait()


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dists]:
    built = Dists(tmp_path_factory.mktemp("packaging"))
    yield built
    built.stop()


class Process:
    """A server started in a test's venv, its output in a file; stopped at the end."""

    def __init__(self, args: list[str], log: Path, cwd: Optional[Path] = None) -> None:
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**clean_env(), "PYTHONUNBUFFERED": "1"},
            )

    def port(self, pattern: str) -> int:
        found = 0

        def listening() -> bool:
            nonlocal found
            match = re.search(pattern, self.log.read_text())
            found = int(match.group(1)) if match else 0
            return bool(found) or self.process.poll() is not None

        assert wait_for(listening, timeout=60) and found, self.log.read_text()
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str, cwd: Optional[Path] = None) -> Process:
        process = Process(list(args), tmp_path / f"process{len(started)}.log", cwd)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def echo(url: str, **kwargs: object) -> None:
    with connect(url, proxy=None, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=10) == b"\x00\xff"


# -- the build ---------------------------------------------------------------------------


def test_packaging_build_is_warning_free_with_spdx_license(dists: Dists) -> None:
    lines = [line for line in dists.output.splitlines() if not MACHINE_NOISE.search(line)]
    warnings = [line for line in lines if re.search(r"warn|deprecat", line, re.IGNORECASE)]
    assert warnings == [], "\n".join(lines)
    with zipfile.ZipFile(dists.wheel) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = wheel.read(name).decode()
        licenses = [n for n in wheel.namelist() if n.endswith("dist-info/licenses/LICENSE")]
        assert licenses and b"MIT License" in wheel.read(licenses[0])
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert "Classifier: License ::" not in metadata
    assert re.search(r"Requires-Dist: gunicorn\[gevent\]>=\d+; extra == \"gunicorn\"", metadata)


def test_packaging_sdist_carries_tests_docs_and_license(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "README.rst",
        "geventws/_speedups.c",
        "geventws/core/ruff.toml",
        "tests/conftest.py",
        "tests/utils.py",
        "tests/wsgi_apps.py",
        "tests/conformance/cases.py",
        "docs/conf.py",
        "docs/index.rst",
        "docs/deploy/nginx.conf",
        "scripts/bench_echo.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".pyc", ".so")) or "node_modules" in n]
    # Everything the test suite and the scripts read, extension or not (the fuzz
    # corpus, the captured handshakes, scripts/fuzz), is in.
    skipped = {"__pycache__", "node_modules", "results"}
    for top in ("tests", "scripts"):
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT)
            if path.is_file() and not skipped & set(relative.parts):
                if not path.name.endswith((".pyc", ".so")):
                    assert relative.as_posix() in names, relative


# -- each documented install ---------------------------------------------------------------


def test_packaging_pip_install_geventws_serves(dists: Dists, run: Callable[..., Process]) -> None:
    venv = dists.venvs["plain"].ready()
    server = run(venv.bin("geventws"), "serve", "geventws.examples.echo:handle", "--port", "0")
    port = server.port(LISTENING.pattern)
    echo(f"ws://127.0.0.1:{port}/")
    # The extras stay extras.
    check = subprocess.run([venv.bin("python"), "-c", "import gunicorn"], check=False)
    assert check.returncode != 0


GUNICORN_APP = textwrap.dedent(
    """
    from geventws.examples.echo import handle
    from geventws.wsgi import WebSocketMiddleware

    def page(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page"]

    app = WebSocketMiddleware(page, {"/ws": handle})
    """
)


def test_packaging_gunicorn_extra_runs_the_worker(
    dists: Dists, run: Callable[..., Process], tmp_path: Path
) -> None:
    venv = dists.venvs["gunicorn"].ready()
    (tmp_path / "deployed.py").write_text(GUNICORN_APP)
    server = run(
        venv.bin("gunicorn"),
        *("-k", "geventws.worker.GeventWebSocketWorker", "-b", "127.0.0.1:0", "-w", "1"),
        "deployed:app",
        cwd=tmp_path,
    )
    port = server.port(r"Listening at: http://127\.0\.0\.1:(\d+)")
    assert wait_for(lambda: "Booting worker" in server.log.read_text(), timeout=60)
    echo(f"ws://127.0.0.1:{port}/ws")
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "page"
    assert "Error" not in server.log.read_text(), server.log.read_text()


FLASK_LAUNCHER = textwrap.dedent(
    """
    from gevent.pywsgi import WSGIServer

    from geventws.examples.flask_app import app

    server = WSGIServer(("127.0.0.1", 0), app)
    server.start()
    print(f"port {server.server_port}", flush=True)
    server.serve_forever()
    """
)


def test_packaging_flask_extra_runs_the_flask_example(
    dists: Dists, run: Callable[..., Process], tmp_path: Path
) -> None:
    venv = dists.venvs["flask"].ready()
    (tmp_path / "launch.py").write_text(FLASK_LAUNCHER)
    server = run(venv.bin("python"), str(tmp_path / "launch.py"))
    port = server.port(r"port (\d+)")
    session = requests.Session()
    session.post(f"http://127.0.0.1:{port}/login", data={"name": "alice"}, timeout=10)
    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    assert cookie, "no session cookie"
    with connect(
        f"ws://127.0.0.1:{port}/ws",
        proxy=None,
        open_timeout=10,
        additional_headers={"Cookie": cookie},
    ) as ws:
        assert ws.recv(timeout=10) == "hello alice"
        ws.send("hi")
        assert ws.recv(timeout=10) == "alice: hi"


# -- the sdist's own tests ------------------------------------------------------------------


def test_packaging_sdist_test_suite_passes(dists: Dists) -> None:
    venv = dists.venvs["sdist"].ready()
    result = subprocess.run(
        [venv.bin("python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"],
        cwd=dists.tree,
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(),
        check=False,
    )
    summary = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, summary
    match = re.search(r"(\d+) passed", result.stdout)
    assert match and int(match.group(1)) > 1000, summary
    assert " failed" not in result.stdout.splitlines()[-1], summary
    assert str(ROOT) not in result.stdout  # nothing ran from this checkout
