"""`vlmopt serve` starts a real vLLM server, reports its base URL once healthy, and stops on Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from vlmopt.serving.vllm_server import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_serve_starts_becomes_healthy_and_stops_on_ctrl_c(vllm_python, tiny_idefics3_dir):
    port = free_port()
    env = {**os.environ, "COLUMNS": "200", "VLMOPT_VLLM_PYTHON": vllm_python}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmopt.cli", "serve", str(tiny_idefics3_dir), "--port", str(port),
         "--max-model-len", "4096", "--max-images", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "ready: base URL" in line:
            break
    said = "".join(lines)
    assert f"http://127.0.0.1:{port}/v1" in said, said
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        assert response.status == 200
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, said + rest
    assert "server stopped" in rest
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
