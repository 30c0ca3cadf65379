"""OME-Zarr in and out (no TensorFlow, no Qt): read an image's full resolution lazily, write a
labels image with its own pyramid through a temporary name.

Reading: :func:`open_image` takes an OME-Zarr image folder (OME-NGFF 0.4 on zarr v2 or 0.5 on
zarr v3; a bioformats2raw collection opens its first image) and gives its full-resolution level
as a lazy dask array with its axes. :func:`image_yxc` turns that into the ``(H, W)`` or
``(H, W, C)`` array prediction takes (t and z must have one plane).

Writing: the result is an OME-NGFF labels image, ``<image>.zarr/labels/<name>`` beside the
source by default, or ``<out>/<stem>.zarr/labels/<name>`` under an output folder. It is written
as a :class:`StagedLabels` in ``labels/.napari-unet-tmp-<token>`` (chunk by chunk, each chunk with
a finished marker, so an interrupted or retried writer never leaves a result that looks
finished); :meth:`StagedLabels.publish` checks every marker, adds the nearest-neighbour pyramid
and the multiscales / image-label metadata with the ``ome-zarr`` library, renames the folder into
place and lists it in ``labels``. Without ``overwrite`` an existing labels image is never
replaced, and with it only one napari-unet wrote. The output-folder rules are `outputs.py`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError
from .outputs import SOFTWARE, TEMP_PREFIX, check_writable_folder, input_folders, output_stems
from .paths import pid_alive

#: Attribute that marks a zarr group napari-unet wrote (``overwrite`` only replaces such groups).
MARKER = "napari-unet"
#: Pyramid levels are added until the longest side is at most this.
PYRAMID_MIN_SIDE = 512
DONE_DIR = ".napari-unet-done"
ZARR_SUFFIXES = (".zarr", ".ome.zarr")


@dataclass
class OmeImage:
    """The full-resolution level of an OME-Zarr image."""

    path: Path
    data: Any  # dask array, axes as in `axes`
    axes: list[dict[str, Any]]  # NGFF axis dicts (name, type, unit)
    scale: list[float]  # full-resolution pixel size per axis
    zarr_format: int

    @property
    def axis_names(self) -> list[str]:
        return [str(a["name"]) for a in self.axes]


def is_zarr(path: Path | str) -> bool:
    """A folder that looks like a zarr store (by its metadata files or its name)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.name.lower().endswith(ZARR_SUFFIXES) or any((p / f).is_file() for f in ("zarr.json", ".zgroup", ".zattrs"))


def open_image(path: Path | str) -> OmeImage:
    """Open an OME-Zarr image; raises InputError with what is wrong before anything is computed."""
    import dask.array as da
    import zarr

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p} does not exist.")
    if not p.is_dir():
        raise InputError(f"{p} is a file, not an OME-Zarr folder (a zarr store is a folder).")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several kinds for "no group here"
        raise InputError(f"{p} is not a zarr store (no zarr.json or .zgroup found): {exc}") from None
    meta = _ome_attrs(group)
    if not meta.get("multiscales") and "bioformats2raw.layout" in meta and "0" in group:
        return open_image(p / "0")
    multiscales = meta.get("multiscales")
    if not multiscales or not isinstance(multiscales, list):
        raise InputError(
            f"{p} is a zarr store without OME-NGFF multiscales metadata, so it is not an OME-Zarr image. "
            "Give the folder of one image (e.g. written by bioformats2raw or ome-zarr)."
        )
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InputError(f"{p}: the multiscales metadata lists no datasets.")
    try:
        array = group[str(datasets[0]["path"])]
    except KeyError:
        raise InputError(f"{p}: the full-resolution array {datasets[0]['path']!r} is missing.") from None
    axes = _axes(ms.get("axes"), array.ndim)
    scale = [1.0] * array.ndim
    for t in datasets[0].get("coordinateTransformations") or []:
        if t.get("type") == "scale" and len(t.get("scale", [])) == array.ndim:
            scale = [float(s) for s in t["scale"]]
    return OmeImage(p, da.from_zarr(array), axes, scale, int(group.info._zarr_format))


def _ome_attrs(group: Any) -> dict[str, Any]:
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs)) if "ome" in attrs else attrs


def _axes(raw: Any, ndim: int) -> list[dict[str, Any]]:
    if raw is None:  # NGFF 0.1/0.2: always tczyx
        names = "tczyx"[-ndim:]
        return [{"name": n, "type": _axis_type(n)} for n in names]
    axes = [dict(a) if isinstance(a, dict) else {"name": str(a), "type": _axis_type(str(a))} for a in raw]
    if len(axes) != ndim:
        raise InputError(f"The axes metadata names {len(axes)} axes but the array has {ndim}.")
    return axes


def _axis_type(name: str) -> str:
    return {"t": "time", "c": "channel"}.get(name, "space")


def image_yxc(image: OmeImage) -> Any:
    """The dask array ``(H, W)`` or ``(H, W, C)`` of a 2D OME-Zarr image (t and z of size 1 dropped)."""
    names = image.axis_names
    if names[-2:] != ["y", "x"]:
        raise InputError(f"{image.path}: napari-unet needs the last two axes to be y and x; the axes are {names}.")
    x = image.data
    for i, name in enumerate(names[:-2]):
        if name != "c" and x.shape[i] != 1:
            raise InputError(
                f"{image.path} has {x.shape[i]} planes along {name}; napari-unet predicts 2D images "
                "(a single t and z plane). Export the planes as separate images."
            )
    index = tuple(slice(None) if n in ("c", "y", "x") else 0 for n in names)
    x = x[index]
    if "c" in names:
        x = da_moveaxis(x, 0, -1)
        if x.shape[-1] == 1:
            x = x[..., 0]
    return x


def da_moveaxis(x: Any, source: int, dest: int) -> Any:
    import dask.array as da

    return da.moveaxis(x, source, dest)


def layer_source(data: Any) -> Any:
    """Full resolution of a napari image layer's data: the first level of a multiscale list."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


# ---------------------------------------------------------------- where labels go


@dataclass(frozen=True)
class LabelsTarget:
    """A labels image to write: `root` is the image group holding `labels/<name>`."""

    source: Path
    root: Path
    name: str
    shape: tuple[int, ...]  # full resolution, the source's axes without c
    axes: list[dict[str, Any]] = field(hash=False)
    scale: list[float] = field(hash=False)
    zarr_format: int = 2
    new_root: bool = False  # the root store is created for this output (under an output folder)

    @property
    def path(self) -> Path:
        return self.root / "labels" / self.name

    @property
    def yx_shape(self) -> tuple[int, int]:
        return int(self.shape[-2]), int(self.shape[-1])


def plan_labels(
    images: Sequence[OmeImage], name: str, out_dir: Path | str | None = None, overwrite: bool = False
) -> list[LabelsTarget]:
    """Targets for each image, checked before any work; raises OutputError.

    Without `out_dir` each labels image goes into its source store; with it, into
    ``out_dir/<stem>.zarr`` (never a folder that holds an input).
    """
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise OutputError(f"{name!r} cannot name a labels image; use letters, digits, '-' or '_'.")
    stems = output_stems([im.path for im in images]) if out_dir is not None else [None] * len(images)
    if out_dir is not None:
        out_dir = Path(out_dir).expanduser()
        check_writable_folder(out_dir)
        if _resolved(out_dir) in input_folders([im.path for im in images]):
            raise OutputError(
                f"The output folder {out_dir} holds input images; results are never written next to them. "
                "Choose a folder of its own, or leave out --out to write labels into each image's store."
            )
    targets = []
    for image, stem in zip(images, stems):
        keep = [i for i, n in enumerate(image.axis_names) if n != "c"]
        shape = tuple(int(image.data.shape[i]) for i in keep)
        axes, scale = [image.axes[i] for i in keep], [image.scale[i] for i in keep]
        if out_dir is None:
            check_writable_folder(image.path, "image store")
            root, new_root = image.path, False
        else:
            root = Path(out_dir) / f"{stem.removesuffix('.ome')}.zarr"
            new_root = not root.exists()
            if root.exists() and not written_by_us(root):
                raise OutputError(f"{root} already exists and napari-unet did not write it; choose another output folder.")
        target = LabelsTarget(image.path, root, name, shape, axes, scale, image.zarr_format, new_root)
        if target.path.exists():
            if not overwrite:
                raise OutputError(
                    f"{target.path} already exists; pass --overwrite to replace it, or give another --labels-name."
                )
            if not written_by_us(target.path):
                raise OutputError(f"{target.path} exists and napari-unet did not write it; it is never replaced.")
        targets.append(target)
    paths = [_resolved(t.path) for t in targets]
    if len(set(paths)) != len(paths):
        dupes = sorted({str(t.source) for t, q in zip(targets, paths) if paths.count(q) > 1})
        raise OutputError(f"The same image is named more than once: {', '.join(dupes[:5])}.")
    return targets


def target_for_array(root: Path, name: str, shape: tuple[int, int]) -> LabelsTarget:
    """A labels image for a 2D array that has no store of its own, in a new store `root` (never replaced)."""
    root = Path(root)
    if root.exists():
        raise OutputError(f"{root} already exists; results never replace a store.")
    check_writable_folder(root.parent)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    return LabelsTarget(root, root, name, (int(shape[0]), int(shape[1])), axes, [1.0, 1.0], 2, True)


def free_labels_name(root: Path | str, base: str) -> str:
    """`base`, or `base-2`, `base-3`... whichever ``root/labels`` does not hold yet."""
    labels = Path(root) / "labels"
    name, n = base, 2
    while (labels / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def written_by_us(path: Path | str) -> bool:
    """True for a zarr group whose attributes carry napari-unet's marker."""
    return MARKER in _read_attrs(Path(path))


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except OSError:
        return Path(os.path.abspath(path))


# ---------------------------------------------------------------- writing


def chunk_grid(shape: tuple[int, int], chunk: int) -> Iterator[tuple[int, int, tuple[int, int, int, int]]]:
    """(iy, ix, (y0, y1, x0, x1)) of every chunk of an (H, W) image, row by row."""
    h, w = shape
    for iy, y0 in enumerate(range(0, h, chunk)):
        for ix, x0 in enumerate(range(0, w, chunk)):
            yield iy, ix, (y0, min(h, y0 + chunk), x0, min(w, x0 + chunk))


@dataclass(frozen=True)
class StagedLabels:
    """A labels image under its temporary name; plain data, so cluster tasks can write into it by path."""

    target: LabelsTarget
    staging: Path
    chunk: int
    dtype: str

    @classmethod
    def create(cls, target: LabelsTarget, chunk: int, dtype: str = "uint8", info: dict | None = None) -> StagedLabels:
        """Make the temporary labels group with an empty full-resolution array chunked by `chunk`."""
        import zarr

        fmt = _format(target.zarr_format)
        if target.new_root and not target.root.exists():
            root = zarr.open_group(str(target.root), mode="a", zarr_format=fmt.zarr_format)
            root.attrs[MARKER] = {"software": SOFTWARE, "source": str(target.source)}
        remove_stale(target.root)
        staging = target.root / "labels" / f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{target.name}"
        try:
            group = zarr.open_group(str(staging), mode="w", zarr_format=fmt.zarr_format)
            _create_level(group, "0", target.shape, chunk, dtype, target)
            (staging / DONE_DIR).mkdir()
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"Cannot write into {target.root}: {exc.strerror or exc}.") from exc
        group.attrs[MARKER] = {"software": SOFTWARE, "pid": os.getpid(), "host": _host(), **(info or {})}
        return cls(target, staging, int(chunk), str(dtype))

    def write_chunk(self, iy: int, ix: int, labels: np.ndarray) -> None:
        """Store one chunk's labels (H, W), then its finished marker (a rerun rewrites the chunk)."""
        import zarr

        y0, x0 = iy * self.chunk, ix * self.chunk
        array = zarr.open_array(str(self.staging / "0"), mode="r+")
        lead = (0,) * (len(self.target.shape) - 2)
        array[(*lead, slice(y0, y0 + labels.shape[0]), slice(x0, x0 + labels.shape[1]))] = labels.astype(self.dtype)
        (self.staging / DONE_DIR / f"{iy}-{ix}").touch()

    def read_chunk(self, iy: int, ix: int) -> np.ndarray:
        """The (H, W) labels stored for one chunk."""
        import zarr

        y0, x0 = iy * self.chunk, ix * self.chunk
        array = zarr.open_array(str(self.staging / "0"), mode="r")
        lead = (0,) * (len(self.target.shape) - 2)
        return np.asarray(array[(*lead, slice(y0, y0 + self.chunk), slice(x0, x0 + self.chunk))])

    def missing(self) -> list[tuple[int, int]]:
        """Chunks without a finished marker."""
        done = {p.name for p in (self.staging / DONE_DIR).iterdir()} if (self.staging / DONE_DIR).is_dir() else set()
        return [(iy, ix) for iy, ix, _ in chunk_grid(self.target.yx_shape, self.chunk) if f"{iy}-{ix}" not in done]

    def publish(self, overwrite: bool = False) -> Path:
        """Add the pyramid and metadata, then rename into place and list the name in ``labels``."""
        import dask.array as da
        import zarr
        from ome_zarr.writer import add_metadata, get_metadata, write_multiscales_metadata

        missing = self.missing()
        if missing:
            raise OutputError(f"{len(missing)} chunk(s) of {self.target.path} were not written; nothing was published.")
        fmt = _format(self.target.zarr_format)
        group = zarr.open_group(str(self.staging), mode="a")
        level = da.from_zarr(zarr.open_array(str(self.staging / "0"), mode="r"))
        shapes = [level.shape]
        while max(level.shape[-2:]) > PYRAMID_MIN_SIDE:
            lead = (slice(None),) * (level.ndim - 2)
            level = level[(*lead, slice(None, None, 2), slice(None, None, 2))]
            array = _create_level(group, str(len(shapes)), level.shape, self.chunk, self.dtype, self.target)
            da.store(level.rechunk(array.chunks), array, lock=False, scheduler="threads")
            level = da.from_zarr(array)
            shapes.append(level.shape)
        datasets = []
        for k, shape in enumerate(shapes):
            factor = [1.0] * (len(shape) - 2) + [2.0**k, 2.0**k]
            scale = [s * f for s, f in zip(self.target.scale, factor)]
            datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        write_multiscales_metadata(group, datasets, fmt=fmt, axes=self.target.axes, name=self.target.name)
        add_metadata(group, {"image-label": {"version": fmt.version, "source": {"image": "../../"}}}, fmt=fmt)
        shutil.rmtree(self.staging / DONE_DIR, ignore_errors=True)
        final = self.target.path
        trash = None
        if final.exists():
            if not (overwrite and written_by_us(final)):
                raise OutputError(f"{final} already exists; pass --overwrite to replace it.")
            trash = final.parent / f"{TEMP_PREFIX}old-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
        try:
            os.rename(self.staging, final)
        except OSError as exc:
            if trash is not None:
                os.rename(trash, final)
            raise OutputError(f"Cannot publish {final}: {exc.strerror or exc}.") from exc
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        labels_group = zarr.open_group(str(self.target.root / "labels"), mode="a", zarr_format=fmt.zarr_format)
        names = [n for n in get_metadata(labels_group).get("labels", []) if n != self.target.name]
        add_metadata(labels_group, {"labels": [*names, self.target.name]}, fmt=fmt)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.target.new_root:
            remove_if_only_ours(self.target.root)


def remove_if_only_ours(root: Path) -> None:
    """Remove a store this run created when it holds no published labels (a failed first write)."""
    labels = root / "labels"
    children = [p for p in labels.iterdir() if p.is_dir()] if labels.is_dir() else []
    if written_by_us(root) and not children:
        shutil.rmtree(root, ignore_errors=True)


def remove_stale(root: Path) -> None:
    """Remove temporary labels folders of writers on this host that no longer run (killed mid-write)."""
    for folder in leftovers(root):
        owner = _read_attrs(folder).get(MARKER, {})
        pid = owner.get("pid") if isinstance(owner, dict) else None
        if isinstance(pid, int) and owner.get("host") == _host() and not pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _host() -> str:
    import socket

    return socket.gethostname()


def _read_attrs(folder: Path) -> dict:
    for meta in (folder / "zarr.json", folder / ".zattrs"):
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            attrs = attrs.get("attributes", attrs) if meta.name == "zarr.json" else attrs
            return attrs if isinstance(attrs, dict) else {}
    return {}


def leftovers(root: Path) -> list[Path]:
    """Temporary labels folders inside a store (none remain after a finished or failed run)."""
    labels = Path(root) / "labels"
    return sorted(p for p in labels.glob(f"{TEMP_PREFIX}*")) if labels.is_dir() else []


def _create_level(group: Any, name: str, shape: tuple[int, ...], chunk: int, dtype: str, target: LabelsTarget) -> Any:
    chunks = tuple([1] * (len(shape) - 2) + [min(chunk, shape[-2]), min(chunk, shape[-1])])
    kwargs: dict[str, Any] = {}
    if target.zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = [str(a["name"]) for a in target.axes]
    return group.create_array(name, shape=tuple(shape), chunks=chunks, dtype=dtype, fill_value=0, **kwargs)


def _format(zarr_format: int) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if zarr_format == 2 else FormatV05()


def labels_dtype(n_labels: int) -> str:
    """The smallest unsigned dtype for label values 0..n_labels-1."""
    return "uint8" if n_labels <= 255 else "uint16" if n_labels <= 65535 else "uint32"


def open_labels(path: Path | str) -> list[Any]:
    """The pyramid of a labels image as lazy dask arrays, full resolution first (for napari)."""
    image = open_image(path)
    import dask.array as da
    import zarr

    group = zarr.open_group(str(image.path), mode="r")
    datasets = _ome_attrs(group)["multiscales"][0]["datasets"]
    return [da.from_zarr(group[str(d["path"])]) for d in datasets]
