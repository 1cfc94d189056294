"""A real vLLM server (CPU build, own venv) on the tiny Idefics3 model, once per test session.

The venv comes from scripts/setup_vllm_venv.sh (about 100 s the first time). Where it cannot be
created the vLLM tests are skipped with the script's output as the reason, except under CI
(`CI` set), where that is a failure: CI must exercise the vLLM path.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vlmopt.config import TaskConfig, parse_config
from vlmopt.serving.vllm_server import REPO_VLLM_VENV, VLLMServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_vllm_venv.sh"
SERVED_MODEL_NAME = "tiny-idefics3"

FAST_START_ARGS = ("--enforce-eager", "--distributed-executor-backend", "uni", "--dtype", "float32")
"""vLLM flags for the tests' CPU servers: no torch.compile and no separate worker process. Measured on
the tiny Idefics3 here: healthy after 45 s instead of 111 s; the answers' numerics are the model's
own eager forward (the tests' tolerances are unchanged)."""


@dataclass(frozen=True)
class VLLMEndpoint:
    """What tests need to reach the session's server."""

    base_url: str
    root_url: str
    model: str
    server: VLLMServer


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The .venv-vllm interpreter, creating the venv if needed; skip (fail under CI) if impossible.

    Tests that start a server of their own ask for this, not for ``vllm_server``, so the session's
    server is not started (and left idle beside theirs) just for its interpreter.
    """
    python = REPO_VLLM_VENV / "bin" / "python"
    result = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-2000:]
        reason = f"cannot create the vLLM venv with {SETUP_SCRIPT.name}:\n{output}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(python)


@pytest.fixture(scope="session")
def vllm_server(vllm_python, tiny_idefics3_dir, tmp_path_factory) -> Iterator[VLLMEndpoint]:
    """A vLLM server on a free loopback port serving the tiny Idefics3 model as `tiny-idefics3`."""
    server = VLLMServer(
        str(tiny_idefics3_dir),
        python=vllm_python,
        served_model_name=SERVED_MODEL_NAME,
        max_model_len=4096,
        limit_mm_per_prompt={"image": 4},
        extra_args=FAST_START_ARGS,
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
    )
    with server:
        yield VLLMEndpoint(server.base_url, server.root_url, SERVED_MODEL_NAME, server)


@dataclass
class RecordingProxy:
    """A loopback HTTP proxy that records every request (path, headers, JSON body) it forwards."""

    upstream: str
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""


@pytest.fixture
def recording_proxy(vllm_server) -> Iterator[RecordingProxy]:
    """Sits between a client and the vLLM server, so tests see exactly what reaches the server."""
    proxy = RecordingProxy(upstream=vllm_server.root_url)

    def handle(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        proxy.requests.append({"path": handler.path, "headers": dict(handler.headers), "body": json.loads(body)})
        forward_to(proxy.upstream, handler, body)

    with loopback_proxy(handle) as base_url:
        proxy.base_url = base_url
        yield proxy


def forward_to(upstream: str, handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """POST ``body`` to the same path on ``upstream`` and relay the answer (errors included)."""
    request = urllib.request.Request(upstream + handler.path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            payload, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        payload, status = error.read(), error.code
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with ``handler``; yields its root URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextmanager
def loopback_proxy(handle: Callable[[BaseHTTPRequestHandler, bytes], None]) -> Iterator[str]:
    """A loopback server whose POSTs go to ``handle``; yields its ``/v1`` base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
            handle(self, self.rfile.read(int(self.headers["Content-Length"])))

        def log_message(self, *args: object) -> None:
            pass

    with loopback_server(Handler) as root:
        yield f"{root}/v1"


def shapes_config(data_folder: Path, tmp_path: Path, base_url: str, model: str, *, num_threads: int = 2,
                  **backend: object) -> TaskConfig:
    """A shapes task served by the OpenAI-compatible server at ``base_url``; ``backend`` overrides settings."""
    return parse_config({
        "name": "shapes-vllm",
        "seed": 1,
        "model": {"id": model, "max_new_tokens": 32},
        "backend": {"kind": "openai", "base_url": base_url, "served_model_name": model, "timeout_s": 30,
                    "num_retries": 1, **backend},
        "dataset": {"source": str(data_folder), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": ["circle", "square", "triangle"]},
        "optimizer": {"auto": None, "num_candidates": 2, "num_trials": 3, "max_bootstrapped_demos": 1,
                      "max_labeled_demos": 2, "minibatch": False, "prompt_model": "none",
                      "instructions": ["Name the shape.", "Which shape is drawn: circle, square or triangle?"]},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
                "num_threads": num_threads},
    })
