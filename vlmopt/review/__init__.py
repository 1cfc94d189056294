"""Model-assisted labeling with Label Studio: the model pre-labels its doubtful rows, a person corrects them.

* :func:`~vlmopt.review.source.read_source` — a run directory or a predict output as candidates;
* :func:`~vlmopt.review.selection.select_for_review` — abstained, low-confidence, invalid and
  disagreeing rows, least confident first;
* :func:`~vlmopt.review.export.export_for_review` — the Label Studio import (tasks with the image
  and the model's pre-annotation) and its labeling config (:mod:`~vlmopt.review.label_studio`);
* :func:`~vlmopt.review.manifest.import_review` — Label Studio's JSON export back into a manifest
  (``id, image, label``) a config can train on, merged by id, with a log of what a person changed
  (:mod:`~vlmopt.review.annotations` reads the export).

Example::

    source = read_source("runs/cats-20260101-120000")
    export_for_review(source, Path("review/tasks.json"), limit=50)
    # ... a person labels the tasks in Label Studio, then Export > JSON ...
    import_review(Path("project-1.json"), Path("data/labels.csv")).summary()
"""

from vlmopt.review.errors import ReviewError
from vlmopt.review.export import export_for_review
from vlmopt.review.manifest import import_review
from vlmopt.review.selection import select_for_review
from vlmopt.review.source import read_source

__all__ = ["ReviewError", "export_for_review", "import_review", "read_source", "select_for_review"]
