"""``vlmopt predict``: a frozen classifier over image files, folders, globs and manifests, streamed and resumable.

A batch pipeline runs it every night over a bucket of new images, so it must keep memory flat,
lose nothing to a kill, resume where it stopped and name every image it could not predict:

* :mod:`~vlmopt.predict.inputs` — lazy discovery of :class:`Item`\\ s (id, path);
* :mod:`~vlmopt.predict.rows` — the per-image code and the row schema, shared with any cluster
  runner so its rows equal these: :func:`predict_image`, :data:`COLUMNS`, :func:`row_schema`;
* :mod:`~vlmopt.predict.sinks` / :mod:`~vlmopt.predict.parquet_sink` — outputs that append a row
  at a time and read their ids back (JSONL, CSV, a Parquet folder of parts), the failures file;
* :mod:`~vlmopt.predict.stream` — the bounded window of worker threads; :mod:`~vlmopt.predict.limits`
  — ``--max-failures``; :mod:`~vlmopt.predict.summary` — the counts and the exit code;
* :func:`predict_to_file` (:mod:`~vlmopt.predict.run`) — all of it, as one call;
* :func:`write_rows` (:mod:`~vlmopt.predict.tables`) — rows already in memory, written at once;
* :func:`~vlmopt.predict.ray_runner.predict_on_ray` — the same rows across a cluster, on Ray Data
  (imported from its module: it needs the ``ray`` extra).

Example::

    from vlmopt.predict import predict_to_file
    summary = predict_to_file(load_artifact("artifact.json"), ["inbox/"], "labels.parquet", lm=lm)
    summary.exit_code    # 0: every image has a row
"""

from vlmopt.predict.inputs import Item, discover
from vlmopt.predict.limits import FailureLimit
from vlmopt.predict.rows import COLUMNS, Failure, outcome_of, predict_image, row_schema
from vlmopt.predict.run import predict_to_file
from vlmopt.predict.summary import PredictSummary, summary_table
from vlmopt.predict.tables import write_rows

__all__ = [
    "COLUMNS",
    "Failure",
    "FailureLimit",
    "Item",
    "PredictSummary",
    "discover",
    "outcome_of",
    "predict_image",
    "predict_to_file",
    "row_schema",
    "summary_table",
    "write_rows",
]
