"""P16: the labeling loop on the micro-VLM — optimize, predict a pool, review, import, optimize again.

1. optimize on a small labelled manifest (``--labelled`` per class), abstaining at
   ``--target-accuracy`` (threshold chosen on val);
2. ``predict`` the frozen program over an unlabelled pool;
3. ``review export`` the ``--review`` least confident pool rows (abstained first) as Label Studio tasks;
4. "a person" labels them — **the pool's known gold stands in for the person**
   (``vlmopt.testing.review_double``, the export shape a real Label Studio 1.23 writes);
5. ``review import`` merges the labels into the manifest; optimize again on it.

Both artifacts are scored on one held-out test folder neither run saw (``evaluate --artifact
--split all``): accuracy overall and, at the same target, coverage and accuracy on the answered.
A toy model on synthetic shapes: the figures show the loop running end to end, not a claim
about real photos.

    python bench/p16_review_loop.py                      # 4 labelled per class, review 24 of a 90-image pool
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from vlmopt.artifacts import load_artifact
from vlmopt.config import AbstainConfig, DatasetConfig
from vlmopt.demo import offline_demo_config
from vlmopt.demo.shapes_task import write_micro_task_dataset
from vlmopt.pipeline import evaluate_task, optimize_task
from vlmopt.predict import predict_to_file
from vlmopt.review import export_for_review, import_review, read_source
from vlmopt.serving.factory import close_lm, create_lm
from vlmopt.testing.review_double import label_studio_export


def write_manifest(folder: Path, path: Path) -> Path:
    """``id, image, label`` rows of an image folder ``<label>/<file>``."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "label"])
        for image in sorted(folder.rglob("*.png")):
            writer.writerow([image.name, str(image), image.parent.name])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, default=4, help="labelled images per class to start from")
    parser.add_argument("--pool", type=int, default=30, help="unlabelled pool images per class")
    parser.add_argument("--test", type=int, default=20, help="held-out test images per class")
    parser.add_argument("--review", type=int, default=24, help="pool rows sent to the person")
    parser.add_argument("--target-accuracy", type=float, default=0.95)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        manifest = write_manifest(write_micro_task_dataset(work / "labelled", n_per_class=args.labelled, seed=11),
                                  work / "labels.csv")
        pool = write_micro_task_dataset(work / "pool", n_per_class=args.pool, seed=12)
        test = write_micro_task_dataset(work / "test", n_per_class=args.test, seed=13)
        base = offline_demo_config(work)
        cfg = base.model_copy(update={
            "dataset": DatasetConfig(source=str(manifest), kind="manifest", id_column="id", image_column="image",
                                     label_column="label", max_image_side=64),
            "optimizer": base.optimizer.model_copy(update={
                "abstain": AbstainConfig(target_accuracy=args.target_accuracy)}),
        })
        held_out = base.model_copy(update={"dataset": base.dataset.model_copy(update={"source": str(test)})})

        def round_of(name: str) -> tuple[Path, dict]:
            outcome = optimize_task(cfg.model_copy(update={"name": name}))
            _, scored = evaluate_task(held_out.model_copy(update={"name": f"{name}-test"}), split="all",
                                      artifact=outcome.artifact)
            return outcome.artifact, scored.metrics

        labelled_before = sum(1 for _ in manifest.open()) - 1
        artifact, before = round_of("before")

        lm = create_lm(cfg)
        try:
            predict_to_file(load_artifact(artifact), [pool], work / "pool.jsonl", lm=lm, num_threads=4)
        finally:
            close_lm(lm)
        exported = export_for_review(read_source(work / "pool.jsonl", artifact=artifact), work / "tasks.json",
                                     limit=args.review)
        tasks = json.loads((work / "tasks.json").read_text())
        gold = {task["data"]["item_id"]: {"label": Path(task["data"]["item_id"]).parent.name} for task in tasks}
        (work / "export.json").write_text(json.dumps(label_studio_export(tasks, gold)))  # the person: gold
        imported = import_review(work / "export.json", manifest)
        print(exported.summary())
        print(imported.summary())

        _, after = round_of("after")
        labelled_after = sum(1 for _ in manifest.open()) - 1
        print(f"\nheld-out test: {args.test * 3} images; target accuracy {args.target_accuracy} on the answered")
        print("| round | labelled images | test accuracy [95% CI] | coverage at the target | accuracy on answered |")
        print("|---|---|---|---|---|")
        for name, n, metrics in (("before", labelled_before, before), ("after", labelled_after, after)):
            selective = metrics.get("selective") or {}
            low, high = metrics["accuracy_ci"]["low"], metrics["accuracy_ci"]["high"]
            answered = selective.get("accuracy_answered")
            print(f"| {name} | {n} | {metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}] | "
                  f"{selective.get('coverage', float('nan')):.3f} | "
                  f"{'-' if answered is None else f'{answered:.3f}'} |")
        print(f"labels it took: {len(tasks)} reviewed ({labelled_after - labelled_before} added to the manifest)")


if __name__ == "__main__":
    main()
