"""The ``vlmopt`` command line: one command per job, thin glue over library functions.

Errors a user can fix (bad config, unreadable dataset, unreachable hub or server, unwritable run
directory) are ``VlmoptError`` subclasses raised where the problem is found; ``user_errors``
prints each as one line naming the item and the fix, and exits 2 — never a traceback. Options
with a fixed set of choices are enums, so ``--help`` lists them and typer refuses other values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from vlmopt.cli_baseline import baseline
from vlmopt.cli_choices import AbstainConfidence, Backend, ExportFormat, Method, Objective, Split
from vlmopt.cli_errors import check_output_file, err_console, user_errors
from vlmopt.cli_review import review_app
from vlmopt.config import ConfigError, TaskConfig, load_config

app = typer.Typer(
    name="vlmopt",
    help="Turn a small local VLM into an image classifier by optimizing the prompt, not the weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and show task configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(review_app, name="review")

console = Console()


@app.callback()
def _quiet_libraries(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the libraries' own logs and progress bars.")
    ] = False,
) -> None:
    """vlmopt draws its own progress bars; the libraries' logs and bars would interleave with them.

    Set through the environment variables the libraries read when they are imported, so that a
    command that never loads them (``--help``, ``config validate``) does not pay for importing them.
    """
    if verbose:
        return
    import logging
    import os
    import sys

    for name in ("dspy", "datasets", "httpx", "LiteLLM", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for variable, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(variable, value)
    if "datasets" in sys.modules:  # imported before the command ran (a notebook, a test): the variables came too late
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.disable_progress_bar()
        sys.modules["transformers"].logging.set_verbosity_error()


QUIET_LIBRARIES = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter bars
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # downloads, and transformers' own bars (it defers to the hub's switch)
    "TRANSFORMERS_VERBOSITY": "error",
}
"""What ``_quiet_libraries`` sets unless ``--verbose`` (a variable the user set is kept)."""

ConfigArg = Annotated[Path, typer.Argument(help="Task config YAML (native or flat shape).", show_default=False)]
ServerUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible server URL (implies --backend openai).")
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="Concurrent calls (default: run.num_threads).")]
ArtifactOpt = Annotated[Path, typer.Option(help="The frozen program (artifact.json).", show_default=False)]


def _load(path: Path) -> TaskConfig:
    return load_config(path)


@config_app.command("validate")
@user_errors
def config_validate(config: ConfigArg) -> None:
    """Check a task config; exit 2 with the problem and the fix if it is wrong."""
    cfg = _load(config)
    console.print(f"[green]ok[/]: {config} ({cfg.task.output}, model {cfg.model.id}, dataset {cfg.dataset.source})")


@config_app.command("show")
@user_errors
def config_show(config: ConfigArg) -> None:
    """Print the resolved config (defaults filled in) as YAML."""
    console.print(_load(config).model_dump_yaml(), highlight=False, markup=False, end="")


@app.command()
@user_errors
def evaluate(
    config: ConfigArg,
    split: Annotated[Split, typer.Option(help="Which split to score.")] = Split.test,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N items of the split.")] = None,
    num_threads: ThreadsOpt = None,
    backend: Annotated[Backend | None, typer.Option(help="Override backend.kind.")] = None,
    base_url: ServerUrlOpt = None,
    artifact: Annotated[
        Path | None, typer.Option(help="A frozen program (artifact.json) to score instead of the config's prompt.")
    ] = None,
) -> None:
    """Score the config's prompt (or a frozen artifact) on a split; write runs/<name>-<timestamp>/."""
    from vlmopt.pipeline import evaluate_task
    from vlmopt.reports.metrics_table import summary_table

    cfg = _with_backend(_load(config), backend, base_url)
    run, outcome = evaluate_task(
        cfg, split=split.value, limit=limit, num_threads=num_threads, artifact=artifact, console=console
    )
    console.print(summary_table(outcome.metrics))
    calls = "not counted by this backend" if outcome.model_calls is None else outcome.model_calls
    console.print(f"model calls: {calls} (finished calls replay from the cache)")
    console.print(f"run directory: [bold]{run.path}[/]")


def _with_backend(cfg: TaskConfig, backend: Backend | None, base_url: str | None) -> TaskConfig:
    """Apply --backend / --base-url through the same validation as the YAML."""
    from vlmopt.config import parse_config

    if backend is None and base_url is None:
        return cfg
    raw = cfg.model_dump()
    raw["backend"]["kind"] = backend.value if backend else Backend.openai.value
    if base_url:
        raw["backend"]["base_url"] = base_url
    return parse_config(raw, "command line")


@app.command()
@user_errors
def optimize(
    config: ConfigArg,
    num_threads: ThreadsOpt = None,
    base_url: ServerUrlOpt = None,
    search_trials: Annotated[int | None, typer.Option(
        "--search", min=0,
        help="Outer Optuna trials over program choices (framing, reasoning, structured decoding, demos, "
        "image side, budget), each a MIPROv2 run.",
    )] = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna RDB URL for the outer study (default: SQLite in the run directory; PostgreSQL to share it).",
    )] = None,
    objective: Annotated[list[Objective] | None, typer.Option(
        help="Outer search objective, repeatable (two or more: Pareto front).",
    )] = None,
    calibrate: Annotated[bool | None, typer.Option(
        "--calibrate/--no-calibrate",
        help="After the search, fit per-label decision weights on val with DSPy's ReAnchor over the measured "
        "label probabilities (kept only when they win); reports accuracy and calibration before and after.",
    )] = None,
    target_accuracy: Annotated[float | None, typer.Option(
        min=0.0, max=1.0,
        help="Abstain when unsure: choose on val the threshold that answers the most images at this accuracy on "
        "the answered (e.g. 0.99); reported on test untouched. Sets optimizer.abstain.",
    )] = None,
    coverage: Annotated[float | None, typer.Option(
        min=0.0, max=1.0,
        help="Abstain when unsure: choose on val the threshold that answers this share of the images, the most "
        "sure ones (e.g. 0.9). Sets optimizer.abstain.",
    )] = None,
    abstain_confidence: Annotated[AbstainConfidence | None, typer.Option(
        help="What the abstention threshold is on: max_prob = P(top label), margin = P(top1) - P(top2), auto = "
        "whichever meets the goal better on val.",
    )] = None,
    worker: Annotated[bool, typer.Option(
        "--worker", help="Only add trials to a shared study (needs --storage); no baseline, test or artifact.",
    )] = False,
    method: Annotated[Method | None, typer.Option(
        help="The DSPy optimizer that searches: MIPROv2, GEPA, SIMBA or random search over demo sets.",
    )] = None,
    compare: Annotated[str | None, typer.Option(
        help="Comma-separated methods (e.g. mipro,gepa,simba,random_search) run on the same splits; the best on "
        "val is the artifact and a table compares them on test (accuracy, macro-F1, invalid rate, calls, time).",
    )] = None,
    budget_calls: Annotated[int | None, typer.Option(
        min=1, help="Task-model calls each method may ask for (one unit for every method).",
    )] = None,
) -> None:
    """Search instructions and few-shot image demos on val; freeze the winner; report it on test.

    --method picks the optimizer (MIPROv2 by default; GEPA and SIMBA need optimizer.prompt_model
    or, for GEPA, optimizer.instructions); --compare runs several and keeps the best on val.

    With --search N, an outer Optuna study also searches the program choices MIPROv2 does not;
    several `--worker` processes can share one study through --storage. A killed study resumes
    with its finished trials when rerun against the same storage. With --calibrate, DSPy's
    ReAnchor then fits the label decision on val (calibration.json: before and after). With
    --target-accuracy or --coverage the program abstains when unsure: the threshold is chosen on
    val and reported on test (abstention.json, risk_coverage.png).
    """
    from vlmopt.pipeline import optimize_task
    from vlmopt.reports.comparison_table import comparison_table

    cfg = _with_backend(_load(config), None, base_url)
    from vlmopt.config import parse_config

    raw = cfg.model_dump()
    objectives = [o.value for o in objective] if objective else None
    updates = {"search_trials": search_trials, "storage": storage, "search_objectives": objectives,
               "calibrate": calibrate, "method": method.value if method else None, "budget_calls": budget_calls,
               "compare": [m.strip() for m in compare.split(",") if m.strip()] if compare else None}
    raw["optimizer"].update({k: v for k, v in updates.items() if v is not None})
    raw["optimizer"]["abstain"] = _abstain_settings(raw["optimizer"]["abstain"], target_accuracy, coverage,
                                                    abstain_confidence)
    if num_threads:
        raw["run"]["num_threads"] = num_threads
    cfg = parse_config(raw, "command line")
    if worker:
        _search_worker(cfg)
        return
    outcome = optimize_task(cfg, console=console)
    console.print(comparison_table(outcome))
    if outcome.methods:
        from vlmopt.reports.method_table import method_table

        console.print(method_table(outcome))
    from vlmopt.optimizers.mipro import demo_effect

    effect = demo_effect(outcome.history)
    if effect:
        shown = ", ".join(f"{n} demos: {score:.3f}" for n, score in effect.items())
        console.print(f"best val accuracy by number of demos (the effect of few-shot): {shown}")
    for note in outcome.notes:
        console.print(f"[yellow]note:[/] {note}")
    calls = "not counted by this backend" if outcome.model_calls is None else outcome.model_calls
    console.print(f"model calls this run: {calls} (a rerun replays finished calls from the cache)")
    console.print(f"artifact: [bold]{outcome.artifact}[/]\nrun directory: [bold]{outcome.run.path}[/]")


def _abstain_settings(current: dict | None, target_accuracy: float | None, coverage: float | None,
                      confidence: AbstainConfidence | None) -> dict | None:
    """``optimizer.abstain`` after the flags: a goal flag replaces the config's goal, --abstain-confidence its kind."""
    if target_accuracy is None and coverage is None and confidence is None:
        return current
    if target_accuracy is not None and coverage is not None:
        raise ConfigError("--target-accuracy and --coverage are two goals for one threshold: give one of them")
    if target_accuracy is not None or coverage is not None:
        current = {**(current or {}), "target_accuracy": target_accuracy, "coverage": coverage}
    elif current is None:
        raise ConfigError("--abstain-confidence needs a goal: --target-accuracy or --coverage (or optimizer.abstain)")
    return {**current, **({"confidence": confidence.value} if confidence else {})}


def _search_worker(cfg: TaskConfig) -> None:
    """One worker of a shared outer study: add trials until the study holds the requested number."""
    from vlmopt.optimizers.study import run_search
    from vlmopt.pipeline import configure_cache
    from vlmopt.reports.run_dir import RunDir

    if not cfg.optimizer.search_trials:
        raise ConfigError("--worker joins an outer study: give --search N (or optimizer.search_trials)")
    run = RunDir.create(cfg.run.output_dir, f"{cfg.name or 'run'}-worker")
    run.write_config(cfg)
    configure_cache(cfg)
    result = run_search(cfg, run=run, worker=True, console=console, objectives=cfg.optimizer.search_objectives)
    console.print(f"study {result.study_name}: {len(result.trials)} complete trials; best trial "
                  f"{result.best.number} values {result.best.values} params {result.best.params}")
    for trial in result.pareto:
        console.print(f"  pareto: trial {trial.number} values {trial.values}")


@app.command()
@user_errors
def predict(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files, folders (searched recursively), globs ('inbox/**/*.jpg', quoted) or manifests "
        "(.csv / .jsonl / .parquet with a column of image paths, relative to the manifest).",
        show_default=False,
    )],
    artifact: ArtifactOpt,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Rows out: .jsonl, .csv, or .parquet (a folder of parts). An existing output is "
        "resumed: images it holds are skipped.",
    )] = Path("predictions.jsonl"),
    config: Annotated[
        Path | None, typer.Option(help="Task config for the backend (default: the artifact's model, in-process).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL instead of in-process.")] = None,
    num_threads: Annotated[int, typer.Option(min=1, help="Concurrent calls (images in flight).")] = 4,
    failures: Annotated[Path | None, typer.Option(
        help="Failures file, rewritten each run (default: OUTPUT's name + .failures.jsonl).",
    )] = None,
    max_failures: Annotated[str | None, typer.Option(
        help="Stop once more images than this have failed: a count (10) or a fraction of the images to predict "
        "(0.05 or 5%). Default: 10%, at least 5.",
    )] = None,
    image_column: Annotated[str | None, typer.Option(
        help="Manifest column holding the image paths (default: image, path, file ... or the only column).",
    )] = None,
    ray: Annotated[bool, typer.Option(
        "--ray", help="Run on Ray Data, in a pool of --actors actors: joins the cluster in RAY_ADDRESS (or "
        "--ray-address), else starts a local Ray. Same OUTPUT, resume and failures as without it. "
        "Needs vlmopt[ray].",
    )] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="With --ray (implies it): the Ray cluster to join (auto, ray://head:10001, 10.0.0.5:6379).",
    )] = None,
    actors: Annotated[int, typer.Option(
        min=1, help="With --ray: actors in the pool, each loading the model (or a client of --base-url) once; "
        "--num-threads is then the calls in flight per actor.",
    )] = 2,
) -> None:
    """Classify images with a frozen program; rows (id, label, confidence) appended as they finish, resumable.

    Exit code: 0 every image has a row; 1 some failed (see the failures file; rerun to retry them);
    2 stopped by --max-failures, or a bad argument; 130 interrupted. Rerun the same command to resume.
    """
    from vlmopt.predict.limits import FailureLimit, FailureLimitError

    try:
        limit = FailureLimit.parse(max_failures)
    except FailureLimitError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--max-failures'") from None

    from vlmopt.artifacts import check_backend, config_for_artifact, load_artifact
    from vlmopt.config import DatasetConfig, ModelConfig
    from vlmopt.predict import predict_to_file, summary_table
    from vlmopt.predict.inputs import check_inputs
    from vlmopt.predict.run import artifact_max_side
    from vlmopt.predict.sinks import default_failures_path
    from vlmopt.serving.factory import create_lm

    ray = ray or ray_address is not None
    failures = failures or default_failures_path(output)
    check_output_file(output, folder_ok=output.suffix.lower() == ".parquet")
    check_output_file(failures)
    check_inputs(inputs)
    frozen = load_artifact(artifact)
    if config is not None:
        cfg = _load(config)
    else:
        model = ModelConfig(id=frozen.model_id, revision=frozen.artifact.model.revision,
                            max_new_tokens=frozen.artifact.generation.max_new_tokens)
        dataset = DatasetConfig(source="-", max_image_side=artifact_max_side(frozen))
        cfg = TaskConfig(model=model, dataset=dataset, task=frozen.task)
    cfg = config_for_artifact(_with_backend(cfg, None, base_url), frozen)
    check_backend(frozen, cfg)
    common = {"failures_path": failures, "max_side": cfg.dataset.max_image_side,
              "max_pixels": cfg.dataset.max_image_pixels, "num_threads": num_threads, "max_failures": limit,
              "image_column": image_column, "console": console}
    try:
        if ray:
            from vlmopt.predict.ray_runner import predict_on_ray

            summary = predict_on_ray(artifact, inputs, output, cfg=cfg, address=ray_address, actors=actors, **common)
        else:
            summary = predict_to_file(frozen, inputs, output, lm=lambda: create_lm(cfg), artifact_path=artifact,
                                      **common)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: the rows written so far are kept in {output}; "
                          "rerun the same command to resume.")
        raise typer.Exit(130) from None
    console.print(summary_table(summary))
    if summary.stopped:
        from vlmopt.predict.limits import PredictStopped

        raise PredictStopped(summary.stopped)
    if not summary.complete:
        err_console.print(f"[yellow]{summary.n_failed} images have no row[/]: see {failures}; "
                          "rerun the same command to retry them.", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
@user_errors
def export(
    artifact: ArtifactOpt,
    format: Annotated[ExportFormat, typer.Option(
        "--format", help="openai-request (a chat-completions body) or prompt-json (messages and decision rule).",
    )] = ExportFormat.openai_request,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model name the server serves (default: the artifact's).")
    ] = None,
) -> None:
    """Write what an app needs to replay the classifier without DSPy (the query image is the {image} slot)."""
    import json

    from vlmopt.artifacts import load_artifact
    from vlmopt.export import decision_caveat
    from vlmopt.export import export as export_artifact

    if output is not None:
        check_output_file(output)
    frozen = load_artifact(artifact)
    caveat = decision_caveat(frozen) if format is ExportFormat.openai_request else None
    if caveat:
        err_console.print(f"[yellow]note:[/] {caveat}")
    text = json.dumps(export_artifact(frozen, format.value, model_name), indent=2, ensure_ascii=False)
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote [bold]{output}[/]")


@app.command()
@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(
        help="Run directories: one to rebuild its report.html; several (or a `baseline` run's folder) for one "
        "table across them.", show_default=False,
    )],
    allow_different_splits: Annotated[bool, typer.Option(
        "--allow-different-splits", help="Show runs that scored other test images, flagged, instead of refusing.",
    )] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for comparison.html/.csv/.md (default: comparison-<timestamp>/ beside the "
        "first run).",
    )] = None,
) -> None:
    """Rebuild a run's report.html; with several runs, one table across them (terminal, HTML, CSV, markdown).

    The table has accuracy with its interval, macro-F1, ECE, latency per image, parameters, and
    the run's cost (model calls, wall time), one row per classifier — an optimize run gives its
    baseline and optimized prompts. Runs that scored different test images are refused. With two
    runs, the page of which images flipped is written too.
    """
    from vlmopt.reports.html import compare_runs, write_report
    from vlmopt.reports.run_dir import METRICS

    if len(runs) == 1 and (runs[0] / METRICS).is_file():
        console.print(f"wrote [bold]{write_report(runs[0])}[/]")
        return
    from vlmopt.reports.comparison_outputs import rich_table, write_comparison
    from vlmopt.reports.run_comparison import check_same_test_set, collect_runs
    from vlmopt.reports.run_dir import RunDir

    compared = collect_runs(runs)
    notes = check_same_test_set(compared, allow=allow_different_splits)
    console.print(rich_table(compared, notes))
    for note in notes.values():
        console.print(f"[yellow](!)[/] {note}", soft_wrap=True)
    out = output or RunDir.create(runs[0].parent, "comparison").path
    for path in write_comparison(compared, notes, out).values():
        console.print(f"wrote [bold]{path}[/]")
    if len(runs) == 2 and all((run / METRICS).is_file() for run in runs):
        console.print(f"wrote [bold]{compare_runs(runs[0], runs[1])}[/]")


@app.command()
@user_errors
def serve(
    model: Annotated[str, typer.Argument(help="Hub id or local model directory to serve.", show_default=False)],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: a free one).")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        min=1, help="Context length, room for the demos' image tokens (default: 8192, or the model's own when shorter)."
    )] = None,
    max_images: Annotated[int, typer.Option(min=1, help="Images per prompt: few-shot demos plus the query.")] = 9,
    python: Annotated[str | None, typer.Option(help="Interpreter with vLLM (default: .venv-vllm or this one).")] = None,
    startup_timeout: Annotated[float, typer.Option(min=1.0, help="Seconds to wait for /health.")] = 900.0,
    lora: Annotated[Path | None, typer.Option(
        help="A fine-tuned artifact.json (vlmopt finetune): serve its verified LoRA adapter too (--enable-lora), "
        "under the adapter's name, which evaluate / predict --artifact then ask for.",
    )] = None,
) -> None:
    """Start a vLLM OpenAI-compatible server for a VLM classifier; print its base URL; Ctrl-C or SIGTERM stops it.

    Flags set for few-shot image classification: prefix caching (instructions and demos are shared
    by every request), several images per prompt, compact-whitespace structured outputs.
    """
    import signal

    from vlmopt.serving.model_path import check_model_path
    from vlmopt.serving.vllm_server import VLLMServer, default_max_model_len

    check_model_path(model)
    lora_args, served = [], ""
    if lora is not None:
        from vlmopt.alternatives.lora_serving import lora_server_args

        lora_args, served = lora_server_args(lora)
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop: leave the `with` block as on Ctrl-C
    server = VLLMServer(
        model, python=python, host=host, port=port,
        max_model_len=max_model_len if max_model_len is not None else default_max_model_len(model),
        limit_mm_per_prompt={"image": max_images}, enable_prefix_caching=True, compact_json=True,
        startup_timeout=startup_timeout, extra_args=lora_args,
    )
    console.print(f"starting vLLM for [bold]{model}[/] (waiting for /health) ...")
    try:
        with server:
            console.print(f"ready: base URL [bold]{server.base_url}[/]  (Ctrl-C to stop)")
            if served:
                console.print(f"LoRA adapter served as [bold]{served}[/]: vlmopt evaluate CONFIG --base-url "
                              f"{server.base_url} --artifact {lora}")
            else:
                console.print(f"use it: vlmopt evaluate CONFIG --base-url {server.base_url}")
            server.wait()
    except KeyboardInterrupt:
        pass  # leaving the `with` block stopped the server's whole process group
    console.print("server stopped")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command()
@user_errors
def finetune(
    config: ConfigArg,
    prompt: Annotated[str, typer.Option(
        help="The prompt the model is trained to answer under: 'baseline' (the config's) or an artifact.json "
        "from optimize (its instruction and demos).",
    )] = "baseline",
    train_and_val: Annotated[bool, typer.Option(
        "--train-and-val", help="Train on train + val for the final model (fixed epochs, no early stopping); "
        "default: train on train, early-stop on the val loss.",
    )] = False,
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the training split.")] = 3.0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps in all (overrides --epochs).")] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the LoRA weights.")] = 2e-4,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha (the update is scaled by alpha / rank).")] = 16,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 4,
    save_steps: Annotated[int | None, typer.Option(
        min=1, help="Checkpoint (and val loss) every N steps (default: once per epoch).",
    )] = None,
    patience: Annotated[int, typer.Option(min=1, help="Val evaluations without improvement before stopping.")] = 2,
    target_modules: Annotated[str | None, typer.Option(
        help="Regex over module names to put LoRA on (default: the language model's attention and MLP projections).",
    )] = None,
) -> None:
    """Fine-tune the VLM with LoRA under the held-out protocol; write the adapter, its artifact and test metrics.

    Killed mid-training? Rerun the same command: it resumes from the last checkpoint. The artifact
    works with evaluate --artifact and predict (in-process: the adapter is merged into the weights),
    and `vlmopt serve MODEL --lora ARTIFACT` serves it with vLLM.
    """
    from dataclasses import replace

    from vlmopt.alternatives.finetune import FinetuneSettings, finetune_task
    from vlmopt.reports.metrics_table import summary_table

    cfg = _load(config)
    settings = replace(FinetuneSettings(), epochs=epochs, max_steps=max_steps, lr=lr, rank=rank, alpha=alpha,
                       batch_size=batch_size, save_steps=save_steps, patience=patience, train_and_val=train_and_val)
    if target_modules:
        settings = replace(settings, target_modules=target_modules)
    outcome = finetune_task(cfg, prompt=prompt, settings=settings, console=console)
    console.print(summary_table(outcome.metrics, title="Fine-tuned (LoRA) on test"))
    for note in outcome.notes:
        console.print(f"[yellow]note:[/] {note}")
    training = outcome.training
    resumed = f", resumed from step {training['resumed_from_step']}" if training["resumed_from_step"] else ""
    console.print(f"trained {training['global_step']} steps ({training['epoch']:.1f} epochs{resumed}); "
                  f"{outcome.metrics['parameters_detail']['trainable']:,} trainable parameters; checkpoints: "
                  f"{training['checkpoints']}")
    console.print(f"adapter: [bold]{outcome.adapter_dir}[/]\nartifact: [bold]{outcome.artifact}[/]\n"
                  f"run directory: [bold]{outcome.run.path}[/]")


@app.command()
@user_errors
def demo(
    offline: Annotated[bool, typer.Option("--offline", help="Use a tiny fixture VLM and synthetic shapes.")] = False,
    workdir: Annotated[Path, typer.Option(help="Where the offline model, images and runs go.")] = Path("runs/demo"),
) -> None:
    """Run the whole pipeline end to end. --offline: a pipeline check on fixtures, not an accuracy claim."""
    if not offline:
        raise ConfigError(
            "demo runs offline only: use `vlmopt demo --offline`, or `vlmopt optimize CONFIG` for a real task"
        )
    from vlmopt.demo import run_offline_demo

    run_offline_demo(workdir, console=console)


app.command()(baseline)  # vlmopt/cli_baseline.py


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":
    app()
