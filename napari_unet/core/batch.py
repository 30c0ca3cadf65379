"""`napari-unet predict` on OME-Zarr images and on a dask.distributed cluster.

Everything is checked before any prediction: the images open (OME-Zarr: multiscales metadata, 2D,
the model's channels), the outputs follow the output policy (`outputs.py`, `omezarr.plan_labels`),
the cluster option parses and the scheduler answers. Files (TIFF, PNG...) become label TIFFs under
``--out`` as in the single-process CLI; OME-Zarr images become OME-Zarr labels images
(`omezarr.py`). Without a cluster the same task functions run in this process.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import IMAGE_SUFFIXES
from .omezarr import OmeImage, image_yxc, is_zarr, open_image, plan_labels
from .outputs import TEMP_PREFIX

DEFAULT_LABELS_NAME = "napari-unet"


def wants_batch(args: argparse.Namespace) -> bool:
    """This command line is ours: an OME-Zarr input (or a folder of them), or a cluster option."""
    return bool(getattr(args, "cluster", None) or getattr(args, "scheduler", None)) or bool(split_inputs(args.images)[0])


def split_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(OME-Zarr images, other files and folders); a folder's OME-Zarr children count as images."""
    zarrs, others = [], []
    for raw in map(Path, paths):
        if is_zarr(raw):
            zarrs.append(raw)
            continue
        children = sorted(c for c in raw.iterdir() if is_zarr(c)) if raw.is_dir() else []
        zarrs.extend(children)
        has_files = raw.is_dir() and any(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES for c in raw.iterdir())
        if not children or has_files or not raw.is_dir():
            others.append(raw)
    return zarrs, others


def predict_command(args: argparse.Namespace) -> int:
    """Run `napari-unet predict` for OME-Zarr inputs and/or on a cluster; returns the exit code."""
    from .cluster import check_address, parse_cluster

    local = parse_cluster(args.cluster) if getattr(args, "cluster", None) else None
    address = check_address(args.scheduler) if getattr(args, "scheduler", None) else None
    if local is not None and address is not None:
        raise InputError("Give either --cluster or --scheduler, not both.")
    zarrs, others = split_inputs(args.images)
    images = [open_image(p) for p in zarrs]
    for image in images:
        image_yxc(image)  # 2D with y, x last: checked before anything runs
    name = getattr(args, "labels_name", None) or DEFAULT_LABELS_NAME
    targets = plan_labels(images, name, args.out, overwrite=args.overwrite)
    file_plans, suffixes = [], (".tif", "_prob.tif") if args.probabilities else (".tif",)
    if others:
        from .io import list_images
        from .outputs import plan_outputs

        if args.out is None:
            raise InputError("--out is needed for image files (TIFF, PNG...); OME-Zarr labels can go beside the image.")
        files = list_images(others)
        file_plans = plan_outputs(files, args.out, protected=[*files, *zarrs], suffixes=suffixes, overwrite=args.overwrite)
    if args.dry_run:
        for target in targets:
            print(f"  {target.source} -> {target.path} (OME-Zarr labels, {target.yx_shape[0]}x{target.yx_shape[1]})")
        for plan in file_plans:
            print(f"  {plan.source} -> {', '.join(str(p) for p in (plan.path, *plan.extra))}")
        where = f"a LocalCluster of {local} workers" if local else f"the scheduler at {address}" if address else "this process"
        print(f"dry run: would predict {len(targets) + len(file_plans)} image(s) on {where}; nothing was written.")
        return 0

    from .bundle import load_bundle
    from .cluster import open_client
    from .predict import _lazy_image

    cluster = local is not None or address is not None
    with open_client(local, address) if cluster else nullcontext() as client:  # a bad scheduler fails here
        bundle = load_bundle(args.model)
        overrides = {k: v for k, v in (("threshold", args.threshold), ("min_size", args.min_size)) if v is not None}
        cfg = bundle.config.replace(predict=overrides).validate() if overrides else bundle.config
        for image in images:
            try:
                _lazy_image(image_yxc(image), cfg)
            except InputError as exc:
                raise InputError(f"{image.path}: {exc}") from exc
        model_path = str(bundle.path) if Path(bundle.path).is_dir() else str(Path(args.model).expanduser().resolve())
        written = Run(model_path, overrides, bundle, cfg).execute(client, images, targets, file_plans, args)
    print(f"{len(written)} result(s) written: " + ", ".join(str(p) for p in written[:5]) + (" ..." if len(written) > 5 else ""))
    return 0


class Run:
    """One batch run: its tasks, its temporary files, and publishing the stores when complete."""

    def __init__(self, model_path: str, overrides: dict[str, Any], bundle: Any, cfg: Any) -> None:
        from .cluster import run_token

        self.model_path, self.overrides, self.bundle, self.cfg = model_path, overrides, bundle, cfg
        self.token = run_token()
        self.prefix = f"{TEMP_PREFIX}{self.token}-"
        self.started = time.time()

    def execute(self, client: Any, images: list[OmeImage], targets: list, file_plans: list, args: Any,
                chunk: int | None = None, progress: Any = None, stop: Any = None) -> list[Path]:  # fmt: skip
        """Run every task and publish each image when complete; returns what was written.

        `progress(done, total)` follows the tasks (as the CLI's bar does); when `stop` is set the
        run ends with `PredictionStopped` and nothing of it remains.
        """
        from tqdm import tqdm

        from . import chunkobjects as co
        from . import cluster as cl
        from .largeimage import prepare
        from .tiling import chunk_size, window_cost

        if client is not None:
            print(f"dask dashboard: {cl.dashboard(client)}", file=sys.stderr)
        budget = cl.worker_budget(client) if client is not None else None
        chunk = chunk or chunk_size(self.cfg, budget)
        objects = co.needs_objects(self.cfg)
        staged: dict[int, Any] = {}  # image -> StagedLabels to publish (or discard on failure)
        merging: dict[int, Any] = {}  # image -> ObjectMerger while its chunks are segmented
        raw: dict[int, Any] = {}  # image -> ObjectsJob whose temporary ids are removed at the end
        calls, written = [], []
        out_dirs = {Path(p.path).parent for p in file_plans}
        try:
            for i, plan in enumerate(file_plans):
                file_job = cl.FileJob(str(plan.source), str(plan.path), str(plan.extra[0]) if plan.extra else None,
                                      args.axes, args.overwrite, self.prefix, self.started)  # fmt: skip
                calls.append((f"napari-unet-file-{self.token}-{i}", cl.file_task, (self.model_path, self.overrides, file_job)))
            remaining: dict[int, int] = {}
            for i, (image, target) in enumerate(zip(images, targets)):
                info = {"model": self.model_path, "source": str(image.path), "chunk": chunk}
                cells = _grid(target.yx_shape, chunk)
                remaining[i] = len(cells)
                if objects:
                    raw[i] = job = co.prepare_objects(image_yxc(image), self.cfg, target, chunk, info)
                    merging[i] = co.ObjectMerger(job)
                    task, step = cl.objects_task, "objects"
                else:
                    job = prepare(image_yxc(image), self.cfg, target, chunk, info)
                    staged[i] = job.staged
                    task, step = cl.chunk_task, "chunk"
                for iy, ix in cells:
                    key = f"napari-unet-{step}-{self.token}-{i}-{iy}-{ix}"
                    calls.append((key, task, (self.model_path, self.overrides, str(image.path), job, iy, ix)))
            if images:
                margin = f" +{co.MARGIN} px for whole objects" if objects else ""
                print(f"chunks of {chunk} px (+{job.context} px context: cost {window_cost(chunk, self.cfg):.2f}x "
                      f"of the kept pixels{margin})", file=sys.stderr)  # fmt: skip
            bar = tqdm(total=len(calls), unit="task", desc="predicting", file=sys.stderr)

            def done(key: str, result: Any) -> list | None:
                bar.update(1)
                if progress is not None:
                    progress(bar.n, bar.total)
                if "-file-" in key:
                    written.append(Path(result))
                    return None
                i, iy, ix = (int(part) for part in key.split("-")[-3:])
                remaining[i] -= 1
                if "-objects-" in key:
                    merging[i].add(iy, ix, result)
                    return self._relabel_calls(i, raw[i], merging, staged, remaining, bar) if remaining[i] == 0 else None
                if remaining[i] == 0:
                    written.append(staged.pop(i).publish(overwrite=args.overwrite))
                    if i in raw:
                        raw.pop(i).raw.discard()
                return None

            finished = cl.run_tasks(client, calls, done, stop=stop) if client is not None else self._run_here(calls, done, stop)
            bar.close()
            if not finished:
                from .predict import PredictionStopped

                raise PredictionStopped("Prediction stopped.")
            return written
        finally:
            for job in staged.values():
                job.discard()
            for job in raw.values():
                job.raw.discard()
            self.clean(out_dirs)

    def _relabel_calls(self, i: int, job: Any, merging: dict, staged: dict, remaining: dict, bar: Any) -> list:
        """All chunks of image `i` are segmented: match its objects, then relabel every chunk."""
        from . import chunkobjects as co

        tables, n_objects = merging.pop(i).tables(self.cfg.predict.min_size)
        staged[i] = co.create_final(job, n_objects, {"model": self.model_path, "objects": n_objects})
        remaining[i] = len(tables)
        bar.total += len(tables)
        bar.refresh()
        return [(f"napari-unet-relabel-{self.token}-{i}-{iy}-{ix}", co.relabel_chunk, (job, staged[i], iy, ix, table))
                for (iy, ix), table in tables.items()]  # fmt: skip

    def _run_here(self, calls: list, done: Any, stop: Any = None) -> bool:
        """The tasks in this process, with the bundle already loaded (no second load); False when stopped."""
        from collections import deque

        from . import cluster as cl

        cl._MODELS[str(Path(self.model_path).resolve())] = (cl._stamp(Path(self.model_path).resolve()), self.bundle)
        queue = deque(calls)
        while queue:
            if stop is not None and stop.is_set():
                return False
            key, fn, call_args = queue.popleft()
            queue.extend(done(key, fn(*call_args)) or ())
        return True

    def clean(self, folders: set[Path]) -> None:
        """Remove this run's temporary files (left by a worker killed mid-write)."""
        for folder in folders:
            for leftover in folder.glob(f"{self.prefix}*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def _grid(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    from .omezarr import chunk_grid

    return [(iy, ix) for iy, ix, _ in chunk_grid(shape, chunk)]
