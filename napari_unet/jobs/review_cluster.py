"""The compute worker's side of a `ReviewPredictRequest` with a cluster: the worker is the cluster's client.

It starts a LocalCluster (``local:N``) or connects to a scheduler, sends the dashboard link as a
`Progress` text, submits one task per image (`core/review_cluster.py`) and sends a `ReviewItemDone`
as each finishes, in the order they finish (`index` counts the images done before it, so the
viewer's bar moves steadily). Stop cancels the tasks not yet finished and closes a LocalCluster.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from napari_unet.core.states import JobState

from .handlers import _started, bundle_info, load_model
from .messages import Progress, ReviewItemDone, ReviewOutcome, ReviewPredictRequest


def run_review_on_cluster(request: ReviewPredictRequest, emit: Any, stop: threading.Event) -> tuple[JobState, Any]:
    from napari_unet.core import review as rv
    from napari_unet.core.cluster import cluster_target, dashboard, open_client, run_tasks, run_token
    from napari_unet.core.review_cluster import review_item_task

    local, address = cluster_target(request.cluster or "")  # a bad value fails before anything starts
    _started(request.job, emit)
    bundle = load_model(request.model)  # checks the model here, and describes it in the outcome
    project = rv.ReviewProject.open(request.project)
    model_path = str(Path(bundle.path).resolve())
    token, total = run_token(), len(request.names)
    calls = [(f"napari-unet-review-{token}-{i}", review_item_task, (model_path, str(project.folder), project.item(name),
              request.method)) for i, name in enumerate(request.names)]  # fmt: skip
    done = {"images": 0, "finished": 0}
    with open_client(local, address) as client:
        emit(Progress(request.job, 0.0, text=f"dask dashboard: {dashboard(client)}"))

        def on_done(key: str, scores: Any) -> None:
            if scores.error is None:
                done["images"] += 1
            emit(ReviewItemDone(request.job, scores.name, done["finished"], total, scores.error, scores.uncertainty,
                                scores.foreground, scores.objects, scores.shape))  # fmt: skip
            done["finished"] += 1

        finished = run_tasks(client, calls, on_done, stop=stop)
    state = JobState.DONE if finished else JobState.STOPPED
    return state, ReviewOutcome(done["images"], bundle_info(bundle))
