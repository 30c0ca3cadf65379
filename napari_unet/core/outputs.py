"""Output policy: where result files may go, and how they are written (no TensorFlow, no Qt).

One rule for the CLI, the widgets' exports and the Review export:

- never write into a folder that holds any of the inputs or labels;
- never replace an existing file unless ``overwrite`` is given, and even then only files that
  napari-unet wrote (their TIFF Software tag says so): label files a user made are never replaced;
- keep outputs distinct when inputs share a name (the relative paths are mirrored);
- write through a temporary file in the destination folder that is removed on every failure path
  (full disk, read-only folder, Ctrl-C), then rename it into place.

Everything is checked by :func:`plan_outputs` before any work starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError

TEMP_PREFIX = ".napari-unet-tmp-"
#: The TIFF Software tag of every file napari-unet writes: ``overwrite`` only ever replaces such files.
SOFTWARE = "napari-unet"


def written_by_us(path: Path | str) -> bool:
    """True for a TIFF whose Software tag says napari-unet wrote it (an earlier result)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file() or path.is_symlink():
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages) and tif.pages[0].software == SOFTWARE
    except Exception:
        return False


def _resolved(path: Path | str) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(Path(path).expanduser()))


def input_folders(files: Iterable[Path | str]) -> set[Path]:
    """The (resolved) folders that directly hold the given input files."""
    return {_resolved(f).parent for f in files}


def check_writable_folder(folder: Path | str, what: str = "output folder", create: bool = False) -> Path:
    """Raise OutputError unless ``folder`` is (or can be created as) a writable folder.

    The nearest existing ancestor must be a folder we can write to; with ``create`` the folder is
    made and a probe file written and removed, which also catches read-only mounts (and root's
    bypass of permission bits does not fool it).
    """
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == folder else f"is inside {probe}, which is a file"
        raise OutputError(f"The {what} {folder} {where}; choose a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"The {what} {folder} is not writable ({probe} is read-only); choose another folder.")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise OutputError(f"Cannot write to the {what} {folder}: {exc.strerror or exc}. Choose another folder.") from exc
    return folder


@dataclass(frozen=True)
class PlannedOutput:
    source: Path  # the input file
    path: Path  # the main output file
    extra: tuple[Path, ...] = ()  # further files for the same input (e.g. probabilities)


def output_stems(sources: Sequence[Path | str]) -> list[str]:
    """Output names (relative paths without suffix) that stay distinct when inputs share a name.

    Plain file stems when they are unique; otherwise the inputs' paths relative to their common
    folder (``d1/a`` and ``d2/a``); the original suffix is kept when only it differs (``a_tif``, ``a_png``).
    """
    paths = [_resolved(s) for s in sources]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    if len(paths) > 1:
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        stems = [p.relative_to(common).with_suffix("").as_posix() for p in paths]
    if len(set(stems)) != len(stems):
        stems = [f"{s}_{p.suffix.lstrip('.').lower()}" if p.suffix else s for s, p in zip(stems, paths)]
    if len(set(stems)) != len(stems):  # the same file named twice
        dupes = sorted({str(p) for p, s in zip(paths, stems) if stems.count(s) > 1})
        raise OutputError(f"The same input is named more than once: {', '.join(dupes[:5])}.")
    return stems


def plan_outputs(
    sources: Sequence[Path | str],
    out_dir: Path | str,
    protected: Iterable[Path | str] = (),
    suffixes: Sequence[str] = (".tif",),
    overwrite: bool = False,
) -> list[PlannedOutput]:
    """Output files for each input under ``out_dir``, checked against the policy; raises OutputError.

    ``suffixes`` are appended to each output stem: the first is the main file, e.g.
    ``(".tif", "_prob.tif")``. ``protected`` are further files (labels) whose folders are off limits.
    """
    out_dir = Path(out_dir).expanduser()
    check_writable_folder(out_dir)
    sources = [Path(s) for s in sources]
    forbidden = input_folders([*sources, *map(Path, protected)])
    if _resolved(out_dir) in forbidden:
        raise OutputError(
            f"The output folder {out_dir} holds input images or labels; results are never written next to "
            "them. Choose an empty folder of its own (nothing there is changed)."
        )
    plans, clashes, existing = [], [], []
    for source, stem in zip(sources, output_stems(sources)):
        files = tuple(out_dir / f"{stem}{suffix}" for suffix in suffixes)
        for f in files:
            if _resolved(f).parent in forbidden:
                clashes.append(f)
            elif f.exists() or f.is_symlink():
                existing.append(f)
        plans.append(PlannedOutput(source, files[0], files[1:]))
    if clashes:
        folders = sorted({str(_resolved(f).parent) for f in clashes})
        raise OutputError(
            f"The output folder {out_dir} would put results into {', '.join(folders[:3])}, which holds input "
            "images or labels; choose an empty folder of its own (nothing there is changed)."
        )
    foreign = [f for f in existing if not written_by_us(f)] if overwrite else []
    if foreign:
        shown = ", ".join(str(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"{shown} already exist(s) and napari-unet did not write them; --overwrite only replaces earlier "
            "napari-unet results. Choose another output folder."
        )
    if existing and not overwrite:
        shown = ", ".join(str(f) for f in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputError(f"{shown} already exist(s); choose another output folder or pass --overwrite to replace them.")
    for f in (f for p in plans for f in (p.path, *p.extra)):
        if f.is_dir():
            raise OutputError(f"{f} is a folder; an output file cannot replace it. Choose another output folder.")
    return plans


def write_atomic(
    path: Path | str, write: Callable[[Path], None], overwrite: bool = False, prefix: str = TEMP_PREFIX
) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary file is removed on every failure (OSError such as a full disk, any exception,
    KeyboardInterrupt). Without ``overwrite`` an existing ``path`` is never replaced. A ``prefix``
    that starts with TEMP_PREFIX and names a run lets that run remove what a killed process left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}. Choose a writable folder.") from exc
    tmp = Path(name)
    try:
        write(tmp)
        follow_umask(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and fails if the file appeared meanwhile
            except FileExistsError as exc:
                raise OutputError(f"{path} already exists; pass --overwrite to replace it.") from exc
            except OSError:  # file systems without hard links
                if path.exists():
                    raise OutputError(f"{path} already exists; pass --overwrite to replace it.") from None
                os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}. Nothing was left behind.") from exc
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return path


def follow_umask(path: Path, mode: int = 0o666) -> None:
    """mkstemp/mkdtemp make private files and folders; give results what a plain open() would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, mode & ~umask)
    except OSError:
        pass
