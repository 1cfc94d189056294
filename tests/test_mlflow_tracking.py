"""optimize logs to a real local MLflow store (sqlite in tmp): the run, its params, metrics and files,
and one nested run per compared method and per candidate it scored."""

import json

import pytest

from method_task_doubles import MethodVLM, feedback_writer
from study_task import make_colour_folder
from test_methods import method_config
from vlmopt.pipeline import optimize_task
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

mlflow = pytest.importorskip("mlflow")


def test_an_optimize_run_its_methods_and_candidates_are_logged_to_mlflow(tmp_path):
    folder = make_colour_folder(tmp_path / "colours", per_class=10, step=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)  # artifacts in tmp too (a sqlite store's default is ./mlruns)
    client.create_experiment("colours", artifact_location=(tmp_path / "artifacts").as_uri())
    cfg = method_config(folder, tmp_path, compare=["random_search", "gepa"], budget_calls=120)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"mlflow_tracking_uri": uri,
                                                                   "mlflow_experiment": "colours"})})
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(MethodVLM()), name="mlflow", cache=True),
                            prompt_lm=feedback_writer().lm())

    experiment = client.get_experiment_by_name("colours")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == outcome.run.path.name
    assert parent.data.params["method"] == outcome.method and parent.data.params["budget_calls"] == "120"
    assert parent.data.metrics["test_accuracy"] == outcome.optimized["test"].metrics["accuracy"]
    assert parent.data.metrics["baseline_test_accuracy"] == outcome.baseline["test"].metrics["accuracy"]
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"artifact.json", "report.html", "metrics.json", "trials.json", "comparison.json"} <= files
    assert (tmp_path / "artifacts").is_dir()
    local = client.download_artifacts(parent.info.run_id, "artifact.json", str(tmp_path / "down"))
    assert json.loads(open(local).read()) == json.loads(outcome.artifact.read_text())

    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"random_search", "gepa"}
    for name, method_run in outcome.methods.items():
        child = children[name]
        assert child.data.metrics["val_accuracy"] == method_run.val.metrics["accuracy"]
        assert child.data.metrics["calls_asked"] == method_run.calls["asked"]
        candidates = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        scored = [row for row in method_run.winner.history if row["scope"] == "full"]
        assert sorted(r.data.metrics["val_score"] for r in candidates) == sorted(row["score"] for row in scored)
