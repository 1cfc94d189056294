"""A real Label Studio server (its own venv, loopback only), once per test session.

The venv comes from scripts/setup_labelstudio_venv.sh, which ``make test`` runs; the fixture
installs nothing. Where the venv is absent the Label Studio tests are skipped saying so, except
under CI (``CI`` set), where that is a failure: CI must exercise the real server.

A fresh Label Studio spends a minute or two migrating its SQLite database, so the first session
migrates a seed data directory once (``label-studio init``, kept in the venv beside the package,
per version) and every session starts from a copy of it: about 12 s to healthy here. The server
serves local files under the session's document root (``LABEL_STUDIO_LOCAL_FILES_*``), and its
one user is a test account whose API token is below: a throwaway server on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlmopt.serving.vllm_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = REPO_ROOT / ".venv-labelstudio"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_labelstudio_venv.sh"
USER = "review-tests@vlmopt.local"
PASSWORD = "review-tests-password"
TOKEN = "0d5f2c7e9a4b41e8b6c3d1f0a9e8b7c6d5e4f3a2"  # the test account's legacy API token (loopback only)
START_TIMEOUT_S = 300.0
INIT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    document_root: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT


def _server_env(data_dir: Path, document_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
    )
    return env


def _account_args() -> list[str]:
    return ["--username", USER, "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"]


def _seed(document_root: Path) -> Path:
    """The migrated data directory with the test account, made once per venv and version."""
    version = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    seed = VENV / f"vlmopt-test-seed-{version}"
    if (seed / "label_studio.sqlite3").is_file():
        return seed
    building = seed.with_name(seed.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run(
        [str(VENV / "bin" / "label-studio"), "init", "--data-dir", str(building), *_account_args()],
        env=_server_env(building, document_root),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=INIT_TIMEOUT_S,
        check=True,
    )
    building.rename(seed)
    return seed


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise RuntimeError(f"Label Studio not healthy after {START_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioServer]:
    """A Label Studio server on a free loopback port, stopped (its whole process group) at the end."""
    if not (VENV / "bin" / "label-studio").is_file():
        reason = f"no Label Studio venv at {VENV}: run `bash {SETUP_SCRIPT.relative_to(REPO_ROOT)}` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("label_studio")
    document_root = base / "files"
    document_root.mkdir()
    data_dir = base / "data"
    shutil.copytree(_seed(document_root), data_dir)
    port = free_port()
    log = base / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(VENV / "bin" / "label-studio"),
                "start",
                "--no-browser",
                "--data-dir",
                str(data_dir),
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                *_account_args(),
            ],
            env=_server_env(data_dir, document_root),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield LabelStudioServer(url, TOKEN, document_root)
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
