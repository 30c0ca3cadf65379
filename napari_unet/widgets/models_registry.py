"""The session's model list: models trained, fine-tuned or loaded since napari started.

Qt-free and TensorFlow-free: both dock widgets observe one `ModelRegistry` through its psygnal
`changed` signal. It also holds the fine-tuning set (corrected image/labels pairs waiting for the
next round) and the record of rounds, so a round that made the model worse can be rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
from psygnal import Signal

from napari_unet.core.config import Config
from napari_unet.core.paths import is_shipped
from napari_unet.core.versions import is_version_dir, write_current
from napari_unet.jobs.messages import ModelInfo


@dataclass(eq=False)
class ModelEntry:
    """One model version the user can predict with or fine-tune: a folder on disk and its metadata.

    The viewer's process holds no Keras object; the compute worker loads the model from `path`.
    """

    name: str
    version: int | None
    path: Path | None
    config: Config
    metrics: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    source: str = "trained"  # trained, fine-tuned or loaded

    @property
    def label(self) -> str:
        """`name vN`, as shown in pickers and in prediction layer names."""
        return f"{self.name} v{self.version}" if self.version is not None else self.name

    @classmethod
    def from_info(cls, info: ModelInfo, source: str) -> ModelEntry:
        """Entry for a model the worker saved or inspected."""
        return cls(
            name=info.name,
            version=info.version,
            path=Path(info.path),
            config=Config.from_dict(info.config),
            metrics=dict(info.metrics),
            parent=info.parent,
            source=source,
        )


@dataclass
class CorrectedPair:
    """A snapshot of an (image, labels) pair taken into the fine-tuning set."""

    image: np.ndarray
    labels: np.ndarray
    name: str
    rgb: bool = False


@dataclass
class Round:
    """One fine-tuning round: which version it started from, what it produced and with what data."""

    parent: ModelEntry
    child: ModelEntry
    pairs: list[CorrectedPair]
    before_dice: float | None
    after_dice: float | None

    @property
    def improved(self) -> bool | None:
        if self.before_dice is None or self.after_dice is None:
            return None
        return self.after_dice >= self.before_dice


class ModelRegistry:
    """Ordered model entries with a current one, a fine-tuning set and the rounds done so far."""

    changed = Signal()

    def __init__(self) -> None:
        self._entries: list[ModelEntry] = []
        self._current: ModelEntry | None = None
        self.pending: list[CorrectedPair] = []
        self.rounds: list[Round] = []

    # ------------------------------------------------------------------ models
    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    @property
    def current(self) -> ModelEntry | None:
        return self._current

    def add(self, entry: ModelEntry, make_current: bool = True) -> ModelEntry:
        """Add a model (an entry for the same folder replaces the old one) and maybe select it."""
        same = self.find(entry.path) if entry.path is not None else None
        if same is not None:
            self._entries[self._entries.index(same)] = entry
            if self._current is same:
                self._current = entry
        else:
            self._entries.append(entry)
        if make_current or self._current is None:
            self._current = entry
            _remember_current(entry)
        self.changed.emit()
        return entry

    def set_current(self, entry: ModelEntry | None) -> None:
        if entry is not None and entry not in self._entries:
            raise ValueError(f"{entry.label} is not in the model list.")
        if entry is not self._current:
            self._current = entry
            _remember_current(entry)
            self.changed.emit()

    def find(self, path: Path | str | None) -> ModelEntry | None:
        if path is None:
            return None
        wanted = Path(path).expanduser().resolve()
        for entry in self._entries:
            if entry.path is not None and entry.path.expanduser().resolve() == wanted:
                return entry
        return None

    # ------------------------------------------------------------------ fine-tuning set
    def add_pair(self, pair: CorrectedPair) -> None:
        """Put a corrected pair in the set; a pair with the same name replaces the older snapshot."""
        self.pending = [p for p in self.pending if p.name != pair.name] + [pair]
        self.changed.emit()

    def clear_pairs(self) -> None:
        self.pending = []
        self.changed.emit()

    def record_round(self, round_: Round) -> None:
        """Remember a finished round; its pairs now live in the child's replay data."""
        self.rounds.append(round_)
        self.pending = []
        self.add(round_.child, make_current=True)

    def roll_back(self) -> Round:
        """Make the last round's parent current again and put its pairs back in the set."""
        if not self.rounds:
            raise ValueError("No fine-tuning round to roll back.")
        round_ = self.rounds.pop()
        names = {p.name for p in round_.pairs}
        self.pending = list(round_.pairs) + [p for p in self.pending if p.name not in names]
        if round_.parent not in self._entries:
            self._entries.append(round_.parent)
        self._current = round_.parent
        _remember_current(round_.parent)
        self.changed.emit()
        return round_

    def clear(self) -> None:
        """Forget everything (tests, or a new session)."""
        self._entries, self._current, self.pending, self.rounds = [], None, [], []
        self.changed.emit()


def _remember_current(entry: ModelEntry | None) -> None:
    """Record the version in its model folder, so the next session (and `load_bundle`) starts from it."""
    if entry is not None and entry.path is not None and is_version_dir(entry.path) and not is_shipped(entry.path):
        write_current(entry.path)


_SESSION = ModelRegistry()


def session_registry() -> ModelRegistry:
    """The registry shared by all widgets of this Python session."""
    return _SESSION
