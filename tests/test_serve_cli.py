"""`vlmopt serve` starts a real vLLM server, reports its base URL once healthy, and stops on Ctrl-C or SIGTERM."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from vlmopt.serving.vllm_server import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_starts_becomes_healthy_and_stops(stop, vllm_python, tiny_idefics3_dir):
    """Ctrl-C, and a supervisor's SIGTERM, stop the whole vLLM process group. Without --max-model-len
    the context comes from the model (4096 here; the old fixed 8192 made vLLM refuse to start)."""
    port = free_port()
    env = {**os.environ, "COLUMNS": "200", "VLMOPT_VLLM_PYTHON": vllm_python}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmopt.cli", "serve", str(tiny_idefics3_dir), "--port", str(port), "--max-images", "3"],
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
    proc.send_signal(stop)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, said + rest
    assert "server stopped" in rest
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    leftover = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", "vLLM processes outlived the server"
