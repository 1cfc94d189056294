"""MLflow tracking for optimize runs: where teams already look for their experiments.

With ``run.mlflow_tracking_uri`` set (a server, ``sqlite:///mlflow.db``, ``file:./mlruns``), each
optimize run becomes one MLflow run in ``run.mlflow_experiment`` (default: the run name):

* **params** — the method, model, backend, budget, prompt model, seed, split sizes, program framing;
* **metrics** — baseline and optimized accuracy on val and test, macro-F1 and invalid rate on test,
  the model calls the run made;
* **artifacts** — ``artifact.json``, ``report.html``, ``metrics.json``, ``trials.json`` and, for
  ``--compare``, ``comparison.json``;
* **nested runs** — one per compared method (its val/test figures, calls and wall time), and one
  per candidate the search scored (its instruction, demos and val score).

DSPy's own ``mlflow.dspy.autolog`` is not switched on: its traces hold every request, and a
request here holds the image as an inline data URI, so a run over a data set would log every
image, demos included, once per call. The frozen artifact and the trial history are the record.
No secret is logged: the backend's API key is referred to by its environment variable's name only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmopt.config import TaskConfig

ARTIFACT_FILES = ("artifact.json", "report.html", "metrics.json", "trials.json", "comparison.json")
MAX_PARAM_CHARS = 500  # an instruction is cut to this in a param (MLflow caps values at 6000)


def _figures(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    keys = ("accuracy", "macro_f1", "invalid_rate")
    return {f"{prefix}_{k}": float(metrics[k]) for k in keys if isinstance(metrics.get(k), int | float)}


def log_optimize_run(cfg: TaskConfig, outcome) -> str:
    """Log one finished optimize run (and its methods and candidates as nested runs); return its MLflow run id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.run.mlflow_tracking_uri)
    mlflow.set_experiment(cfg.run.mlflow_experiment or cfg.name or "vlmopt")
    run_path = Path(outcome.run.path)
    with mlflow.start_run(run_name=run_path.name) as parent:
        mlflow.log_params(
            {
                "method": outcome.method,
                "compare": ",".join(cfg.optimizer.compare) or "-",
                "model": cfg.model.id,
                "backend": cfg.backend.kind,
                "budget_calls": cfg.optimizer.budget_calls,
                "prompt_model": cfg.optimizer.prompt_model or "task model",
                "seed": cfg.seed,
                "adapter": cfg.task.adapter,
                "reasoning": cfg.task.reasoning,
                "structured_generation": cfg.task.structured_generation,
                **{
                    f"n_{split}": size
                    for split, size in (outcome.optimized["test"].metrics.get("split_sizes") or {}).items()
                },
            }
        )
        metrics = {
            **_figures("baseline_val", outcome.baseline["val"].metrics),
            **_figures("baseline_test", outcome.baseline["test"].metrics),
            **_figures("val", outcome.optimized["val"].metrics),
            **_figures("test", outcome.optimized["test"].metrics),
        }
        if outcome.model_calls is not None:
            metrics["model_calls"] = float(outcome.model_calls)
        mlflow.log_metrics(metrics)
        for name in ARTIFACT_FILES:
            if (run_path / name).is_file():
                mlflow.log_artifact(str(run_path / name))
        if outcome.methods:
            for name, method_run in outcome.methods.items():
                with mlflow.start_run(run_name=name, nested=True):
                    mlflow.log_params({"method": name, "winner": name == outcome.method})
                    mlflow.log_metrics(
                        {
                            **_figures("val", method_run.val.metrics),
                            **_figures("test", method_run.test.metrics),
                            **_calls(method_run.calls),
                        }
                    )
                    _log_candidates(method_run.winner.history, name)
        else:
            _log_candidates(outcome.history, outcome.method)
        return parent.info.run_id


def _calls(calls: dict[str, Any]) -> dict[str, float]:
    keys = ("asked", "asked_task", "asked_writer", "reached_task", "reached_writer", "wall_s")
    return {f"calls_{k}" if k != "wall_s" else k: float(calls[k]) for k in keys if calls.get(k) is not None}


def _log_candidates(history: list[dict[str, Any]], method: str) -> None:
    """One nested run per candidate scored on the full val split, or per outer-study trial (its settings)."""
    import mlflow

    rows = [r for r in history if r.get("scope") == "full" or "params" in r]
    for i, row in enumerate(rows):
        label = row.get("candidate", row.get("trial", i))
        with mlflow.start_run(run_name=f"{method} {'trial' if 'params' in row else 'candidate'} {label}", nested=True):
            params = row.get("params") or {
                "instruction": str(row.get("instruction", ""))[:MAX_PARAM_CHARS],
                "n_demos": row.get("n_demos"),
            }
            mlflow.log_params({"method": method, **params})
            mlflow.log_metric("val_score", float(row["score"]))
