"""A server that hangs: each call times out, the run names the failed items and keeps every
finished prediction, and a rerun against a healthy server asks only for the missing items.

The hang is real network behaviour on loopback: a proxy in front of the real vLLM test server
forwards the first requests, then accepts connections and never answers.
"""

import json
import threading

import pytest

from fixtures_vllm import forward_to, loopback_proxy, shapes_config
from vlmopt.evaluate import EvaluationInterrupted
from vlmopt.pipeline import evaluate_task
from vlmopt.reports.run_dir import read_predictions
from vlmopt.testing.images import make_image_dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture
def hanging_proxy(vllm_server):
    """Forwards ``answer_first`` chat completions to vLLM, then hangs until the test ends."""
    state = {"answer_first": 5, "seen": 0, "lock": threading.Lock(), "release": threading.Event()}

    def handle(handler, body: bytes) -> None:
        with state["lock"]:
            state["seen"] += 1
            forward = state["seen"] <= state["answer_first"]
        if forward:
            forward_to(vllm_server.root_url, handler, body)
        else:
            state["release"].wait(120)

    with loopback_proxy(handle) as base_url:
        try:
            yield base_url
        finally:
            state["release"].set()


def test_hanging_server_times_out_keeps_rows_and_rerun_finishes_only_the_rest(
    vllm_server, hanging_proxy, recording_proxy, tmp_path
):
    data = make_image_dataset(tmp_path / "data", n_per_class=8)
    total = len(data.items)

    def config(base_url: str):
        """One request at a time, 6 s each and no retry; no probability requests (one call per item)."""
        return shapes_config(data.folder, tmp_path, base_url, vllm_server.model, num_threads=1, timeout_s=6,
                             num_retries=0, label_probabilities=False)

    with pytest.raises(EvaluationInterrupted) as stopped:
        evaluate_task(config(hanging_proxy), split="all")
    assert "too many failed items" in str(stopped.value) and "Timeout" in str(stopped.value)
    (run_path,) = (tmp_path / "runs").iterdir()
    finished = read_predictions(run_path)
    failures = [json.loads(line) for line in (run_path / "failures.jsonl").read_text().splitlines()]
    assert len(finished) == 5
    assert len(failures) >= 5 and all("Timeout" in f["reason"] for f in failures)

    _, rerun = evaluate_task(config(recording_proxy.base_url), split="all")
    assert len(rerun.records) == total and not rerun.failed_ids
    chat_calls = [r for r in recording_proxy.requests if r["path"].endswith("/chat/completions")]
    assert len(chat_calls) == total - len(finished)
    before = {r.id: r.predicted for r in finished}
    assert all(r.predicted == before[r.id] for r in rerun.records if r.id in before)
