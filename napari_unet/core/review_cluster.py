"""The Review's batch step on a dask.distributed cluster: one task per image.

The compute worker is the cluster's client (`jobs/review_cluster.py`); each cluster worker loads the
model once (`cluster.worker_model`), predicts an image with the same rule as the single-process
review (`review.predict_for_review`) and writes its prediction files atomically, as the compute
worker would. Only the viewer writes the review index: a task returns the scores. Tasks carry
paths and an index entry (plain data), so the review folder and images must be visible to every
worker (one machine, or a shared file system).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .review import ReviewItem, ReviewProject


@dataclass(frozen=True)
class ItemScores:
    """What the viewer records for one image (`error` set: it was left out, and why)."""

    name: str
    error: str | None = None
    uncertainty: float | None = None
    foreground: float | None = None
    objects: int | None = None
    shape: list[int] | None = None


def review_item_task(model_path: str, folder: str, item: ReviewItem, method: str) -> ItemScores:
    """Cluster task: predict one review image and write its prediction files; returns its scores."""
    from .cluster import worker_model
    from .errors import NapariUNetError
    from .review import predict_for_review

    bundle = worker_model(model_path)
    project = ReviewProject(Path(folder), [item], {})  # this item only: the index is the viewer's
    try:
        pred = predict_for_review(bundle.model, project.load_image(item.name), bundle.config, method, None, item.name)
    except NapariUNetError as exc:
        return ItemScores(item.name, error=str(exc))
    project.write_prediction_files(item.name, pred)
    return ItemScores(item.name, None, pred.uncertainty, pred.foreground, pred.objects, list(pred.labels.shape))
