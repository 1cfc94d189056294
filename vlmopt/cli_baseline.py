"""``vlmopt baseline``: the classic classifiers to put beside the prompt-optimized VLM.

Its own module (registered in ``cli.py`` by one line) so the command's options and output live
together; the work is :func:`vlmopt.alternatives.run.run_baselines`, imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from vlmopt.cli_errors import user_errors
from vlmopt.config import load_config

console = Console()


@user_errors
def baseline(
    config: Annotated[
        Path, typer.Argument(help="Task config YAML (its dataset, seed and splits are used).", show_default=False)
    ],
    clip: Annotated[
        str,
        typer.Option(
            "--clip",
            help="Contrastive image-text model: hub id or local directory (CLIP, SigLIP), e.g. "
            "openai/clip-vit-base-patch32 or google/siglip-base-patch16-224.",
            show_default=False,
        ),
    ],
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also fit a linear probe (scikit-learn logistic regression) on the train split's image "
            "embeddings; val picks its C. Needs vlmopt[baselines].",
        ),
    ] = False,
    train_and_val: Annotated[
        bool,
        typer.Option(
            "--train-and-val",
            help="With --probe: train on train + val; C is then fixed (--probe-c, default 1), "
            "since val may not choose what it trained.",
        ),
    ] = False,
    zero_shot: Annotated[
        bool,
        typer.Option(
            "--zero-shot/--no-zero-shot",
            help="Run the zero-shot classifier (class names in prompt templates).",
        ),
    ] = True,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help="Prompt template with one {} for the class name, repeatable "
            "(default: 'a photo of a {}.' and four more, averaged).",
        ),
    ] = None,
    probe_c: Annotated[
        float | None,
        typer.Option(
            "--probe-c",
            min=1e-6,
            help="Fix the probe's inverse regularisation C instead of choosing it on val.",
        ),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub revision of --clip.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """CLIP/SigLIP zero-shot (and --probe: a linear probe) on the config's own splits; write runs/<name>-baseline-*/.

    Scored on the same seeded test split as `evaluate` and `optimize`, with the same metrics, plus
    latency per image and parameter count; compare with `vlmopt report RUN ...`.
    """
    from vlmopt.alternatives.run import BaselineSettings, run_baselines
    from vlmopt.alternatives.zero_shot import DEFAULT_TEMPLATES
    from vlmopt.config import ConfigError

    if train_and_val and not probe:
        raise ConfigError("--train-and-val trains the linear probe: add --probe")
    settings = BaselineSettings(
        model=clip,
        revision=revision,
        zero_shot=zero_shot,
        probe=probe,
        train_and_val=train_and_val,
        templates=tuple(template) if template else DEFAULT_TEMPLATES,
        C=probe_c,
        batch_size=batch_size,
        device=device,
    )
    outcome = run_baselines(load_config(config), settings, console=console)
    from vlmopt.reports.comparison_outputs import rich_table
    from vlmopt.reports.run_comparison import collect_runs

    console.print(rich_table(collect_runs([outcome.run.path])))
    console.print(f"run directory: [bold]{outcome.run.path}[/]")
