"""Fixtures for the browser tests: a JupyterLab server on a random free port of 127.0.0.1, serving a temporary copy
of ``notebooks/``, and a headless system Chromium driven by Playwright.

Outside CI a missing Chromium or Playwright skips the tests with the reason; under ``CI=true`` it fails them
(``.ci/run`` installs Chromium with apt, and Playwright comes with the dev extra).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("FSS_LAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "results" / "tests" / "browser"  # screenshots and saved notebooks of the last run


def in_ci() -> bool:
    """Whether this runs under CI (``CI=true``), where missing browser tools are a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str):
    if in_ci():
        pytest.fail(f"CI=true but {reason} (.ci/run installs chromium with apt; playwright is in the dev extra)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab process (started by this test session) serving ``root`` on 127.0.0.1:``port``."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.root, self.port, self.token, self.proc, self.log = root, port, token, proc, log

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (e.g. ``lab/tree/x.ipynb``) with the token."""
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def notebook_url(self, name: str) -> str:
        """URL that opens ``name`` in a fresh Lab workspace of its own: Lab restores a workspace's open tabs, so in
        the shared default workspace a notebook an earlier test opened came back as the current widget (and the
        next test ran and waited on that one)."""
        import uuid as _uuid

        return self.url(f"lab/workspaces/t{_uuid.uuid4().hex[:12]}/tree/{name}")

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL); its kernels are in its process group."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # jupyter server: SIGINT twice -> shutdown without prompt
            time.sleep(0.3)
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # any kernel left behind shares the server's process group (start_new_session below)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab (the venv's) serving a copy of notebooks/ (so saving never touches the working tree)."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _missing("jupyterlab is not installed")
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns("results", ".ipynb_checkpoints"))
    if (REPO / "jupytext.toml").is_file():
        shutil.copy(REPO / "jupytext.toml", base / "jupytext.toml")
    port, token = free_port(), uuid.uuid4().hex
    home = base / "home"
    (home / "runtime").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
           "MPLBACKEND": "Agg"}
    # User settings of this server only: every cell rendered (no windowing, so figures far down the page are real
    # <img> elements in screenshots too) and no news / update pop-ups (this machine is offline).
    settings = home / "settings" / "@jupyterlab"
    for ext, plugin, values in (("notebook-extension", "tracker", {"windowingMode": "none"}),
                                ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False})):
        (settings / ext).mkdir(parents=True, exist_ok=True)
        (settings / ext / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    log = base / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={home / 'workspaces'}", f"--LabApp.user_settings_dir={home / 'settings'}"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(root, port, token, proc, log)
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(server.url("api/status"), timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            server.stop()
            pytest.fail(f"JupyterLab did not start on port {port}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield server
    server.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(log, ARTIFACTS / "lab.log")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium under Playwright (never a downloaded browser build)."""
    if not CHROMIUM.is_file():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
