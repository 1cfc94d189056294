"""Which artifact an output's rows came from, so that a resumed run adds rows of the same program.

Resume is by id: rerun the same command and the images already in the output are skipped. Rerun
it with a *new* artifact (re-optimized, other labels, another model) and, without a check, the
output would silently mix two programs' answers. So every run records the artifact's sha256 in a
small stamp beside the rows, and a run over an output that holds rows of another artifact stops
before any work, saying which.

Where the stamp lives: ``labels.jsonl`` / ``labels.csv`` -> ``labels.vlmopt.json`` beside it; a
Parquet folder ``labels.parquet/`` -> ``labels.parquet/_vlmopt.json`` inside (names starting with
``_`` are skipped by Parquet readers). An output written before stamps existed is adopted by its
next run.

Example::

    claim_output(Path("labels.jsonl"), frozen, has_rows=bool(sink.ids))   # OutputError if another artifact's
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmopt.artifacts import FrozenProgram
from vlmopt.predict.sinks import OutputError


def stamp_path(output: Path) -> Path:
    """Where ``output``'s stamp is kept (see the module docstring)."""
    if output.suffix.lower() == ".parquet":
        return output / "_vlmopt.json"
    return output.with_name(f"{output.stem}.vlmopt.json")


def claim_output(output: Path, frozen: FrozenProgram, *, has_rows: bool, artifact_path: str | Path = "") -> None:
    """Stamp ``output`` as ``frozen``'s, or stop if it already holds rows of another artifact."""
    path = stamp_path(output)
    sha = frozen.artifact.sha256
    if has_rows and path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("artifact_sha256") not in (None, sha):
            raise OutputError(
                f"{output} holds rows of another artifact ({recorded.get('artifact') or 'unnamed'}, sha256 "
                f"{str(recorded['artifact_sha256'])[:12]}), not of {artifact_path or 'this one'} "
                f"(sha256 {sha[:12]}): give another -o, or remove {output} to start over"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"artifact_sha256": sha, "artifact": str(artifact_path), "model": frozen.model_id}
    path.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
