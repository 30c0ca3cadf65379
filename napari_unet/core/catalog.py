"""What is in a models folder: models, their versions, task, date, parent and validation scores.

Reads ``metadata.json`` files only (no TensorFlow, no model is loaded), for ``napari-unet models``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .versions import METADATA_FILE, list_versions, read_current

#: Scores shown in the listing, in this order, when a version has them.
SHOWN_SCORES = ("object_f1", "dice", "before_object_f1", "before_dice", "replay_dice")


@dataclass
class VersionSummary:
    version: str  # v001
    path: str
    task: str = "?"
    created: str = ""
    parent: str | None = None  # "v001" within the same model, else the parent's path
    scores: dict[str, float] = field(default_factory=dict)
    current: bool = False
    problem: str = ""  # why its metadata could not be read


@dataclass
class ModelSummary:
    name: str
    path: str
    versions: list[VersionSummary]


def list_catalog(root: Path | str) -> list[ModelSummary]:
    """Every model folder under `root` (those with at least one version), sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = list_versions(folder)
        if versions:
            current = read_current(folder)
            out.append(ModelSummary(folder.name, str(folder), [_summary(v, v == current) for v in versions]))
    return out


def _summary(version_dir: Path, current: bool) -> VersionSummary:
    summary = VersionSummary(version_dir.name, str(version_dir), current=current)
    try:
        meta = json.loads((version_dir / METADATA_FILE).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        summary.problem = f"unreadable {METADATA_FILE} ({type(exc).__name__})"
        return summary
    summary.task = str(meta.get("task") or "?")
    summary.created = str(meta.get("created") or "")
    summary.parent = _parent(meta.get("parent"), version_dir)
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    summary.scores = {k: float(metrics[k]) for k in SHOWN_SCORES if isinstance(metrics.get(k), (int, float))}
    return summary


def _parent(parent: object, version_dir: Path) -> str | None:
    if not isinstance(parent, str) or not parent:
        return None
    path = Path(parent)
    return path.name if path.parent == version_dir.parent else parent


def format_catalog(root: Path | str, models: list[ModelSummary]) -> str:
    """The listing printed by ``napari-unet models``."""
    if not models:
        return f"No models in {root} (train one with `napari-unet train`, or pass --models FOLDER)."
    lines = [f"Models in {root}:"]
    for model in models:
        tasks = sorted({v.task for v in model.versions if not v.problem})
        count = len(model.versions)
        lines.append(f"{model.name}  ({', '.join(tasks) or '?'}; {count} version{'s' if count != 1 else ''})")
        for v in model.versions:
            mark = "*" if v.current else " "
            if v.problem:
                lines.append(f" {mark}{v.version}  {v.problem}")
                continue
            date = v.created.replace("T", " ")[:16] or "date unknown"
            scores = ", ".join(f"{k} {s:.3f}" for k, s in v.scores.items()) or "no validation scores"
            lines.append(f" {mark}{v.version}  {date}  parent {v.parent or '-'}  {scores}")
    lines.append("* the current version (the one Predict and Fine-tune start from)")
    return "\n".join(lines)


def catalog_json(models: list[ModelSummary]) -> str:
    return json.dumps([asdict(m) for m in models], indent=2)
