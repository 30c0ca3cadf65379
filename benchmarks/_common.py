"""Shared pieces of the benchmarks: result rows, machine description, load and memory monitors, data.

Protocol every benchmark module follows (`benchmarks/run_all.py` relies on it):

* `run(quick: bool = False) -> Report` measures and returns rows of figures;
* `main(argv)` parses `--quick` and `--json PATH`, prints the rows as they are measured and a
  table at the end, and writes the report as JSON to PATH. `python -m benchmarks.<name>` calls it.

A report whose data is missing sets `skipped` to the reason instead of failing.
Nothing here imports TensorFlow (the start-up benchmark and the runner must stay light).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Row:
    """One measured figure. `target` is a comparison such as ">= 0.9" and `ok` whether it is met."""

    figure: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def shown(self) -> str:
        return format_value(self.value, self.unit)


@dataclass
class Report:
    """What one benchmark measured, on which machine, under which load."""

    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    quick: bool = False
    seconds: float = 0.0
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)

    def add(self, figure: str, value: Any, unit: str = "", target: str = "", note: str = "") -> Row:
        """Append a row; `ok` is computed from `target` (e.g. ">= 0.85", "< 4000") when it has one."""
        row = Row(figure, _plain(value), unit, target, check_target(value, target), note)
        self.rows.append(row)
        print(f"  {figure}: {row.shown()}" + (f"   (target {target}: {_verdict(row.ok)})" if target else ""), flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Report:
        raw = dict(raw)
        raw["rows"] = [Row(**r) for r in raw.get("rows", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so reports serialise as JSON."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[ok]


def check_target(value: Any, target: str) -> bool | None:
    """Whether `value` meets a target like ">= 0.9" or "< 100 ms"; None without one."""
    if not target or value is None or isinstance(value, str):
        return None
    op, _, rest = target.strip().partition(" ")
    try:
        limit = float(rest.split()[0])  # a unit may follow: "< 4096 MiB"
    except (ValueError, IndexError):
        return None
    value = float(value)
    return {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}.get(op)


def format_value(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        magnitude = abs(value)
        if magnitude == 0:
            text = "0"
        elif magnitude >= 100:
            text = f"{value:,.0f}"
        elif magnitude >= 10:
            text = f"{value:.1f}"
        elif magnitude >= 0.01:
            text = f"{value:.3f}"
        else:
            text = f"{value:.2e}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


# ------------------------------------------------------------------ machine and load


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi (no TensorFlow import); empty when there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def package_version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, RAM, GPU, library versions and the date (UTC)."""
    import psutil

    gpus = gpu_names()
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": ", ".join(gpus) if gpus else "none",
        "device": "gpu" if gpus else "cpu",
        "tensorflow": package_version("tensorflow", "tensorflow-cpu"),
        "keras": package_version("keras"),
        "numpy": package_version("numpy"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": now(),
    }


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class LoadMonitor:
    """How busy the machine was with *other* work while a benchmark ran.

    `others_cores` is the mean number of cores that processes outside this process tree kept
    busy (system busy time minus our own CPU time, per second of wall time).
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()

    def _own_cpu(self) -> float:
        total = 0.0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except self._psutil.Error:
                continue
            total += t.user + t.system
            if proc is self._me:
                total += t.children_user + t.children_system  # finished children
        return total

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def __enter__(self) -> LoadMonitor:
        self.load_start = os.getloadavg()[0]
        self.t0, self.busy0, self.own0 = time.monotonic(), self._busy(), self._own_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-6)
        busy, own = self._busy() - self.busy0, self._own_cpu() - self.own0
        self.result = {
            "loadavg_start": round(self.load_start, 2),
            "loadavg_end": round(os.getloadavg()[0], 2),
            "own_cores": round(own / wall, 2),
            "others_cores": round(max(busy - own, 0.0) / wall, 2),
            "cores": usable_cores(),
        }


def describe_load(load: dict[str, float]) -> str:
    if not load:
        return "load not recorded"
    return (
        f"other processes kept {load['others_cores']:.2f} of {load['cores']} cores busy on average "
        f"(load average {load['loadavg_start']:.2f} at start, {load['loadavg_end']:.2f} at end)"
    )


# ------------------------------------------------------------------ memory


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def max_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakRSS:
    """Samples this process's RSS in a thread; `peak` is the highest value seen (bytes)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def mib(n_bytes: float) -> float:
    return n_bytes / 1024**2


# ------------------------------------------------------------------ timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------ data


def read_pairs(folder: str, label_dir: str) -> list[tuple[str, Any, Any]]:
    """(name, image, labels) of a `../shared/data` set sorted by name; empty when it is absent."""
    import tifffile

    root = SHARED_DATA / folder
    if not (root / "images").is_dir():
        return []
    return [
        (path.stem, tifffile.imread(path), tifffile.imread(root / label_dir / path.name))
        for path in sorted((root / "images").glob("*.tif"))
    ]


def nuclei_split(held_out_every: int = 5) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """Grayscale DSB2018 nuclei split by image: every `held_out_every`-th (by name) is held out.

    The 9 RGB (stained tissue) images are left out: a 1-channel model is trained.
    """
    gray = [p for p in read_pairs("nuclei", "labels") if p[1].ndim == 2]
    train = [p for i, p in enumerate(gray) if i % held_out_every != held_out_every - 1]
    held = [p for i, p in enumerate(gray) if i % held_out_every == held_out_every - 1]
    return train, held


def xray_split(held_out_every: int = 4) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """Simulated chest radiographs with lung masks, every `held_out_every`-th view held out."""
    pairs = read_pairs("xray", "masks")
    train = [p for i, p in enumerate(pairs) if i % held_out_every != held_out_every - 1]
    held = [p for i, p in enumerate(pairs) if i % held_out_every == held_out_every - 1]
    return train, held


def synthetic_nuclei(size: int, seed: int = 0, n_objects: int | None = None) -> tuple[Any, Any]:
    """A blurred image of random disks with its instance labels (for benchmarks that need no real data)."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.int32)
    n = n_objects if n_objects is not None else max(4, size * size // 1500)
    yy, xx = np.ogrid[:size, :size]
    for k in range(1, n + 1):
        r = rng.uniform(4, 10)
        cy, cx = rng.uniform(r, size - r, 2)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = k
    image = ndi.gaussian_filter((labels > 0).astype(np.float32) * 200, 1.5) + rng.normal(20, 8, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def training_pairs(raw: Sequence[tuple[str, Any, Any]]) -> list[Any]:
    from napari_unet.core.data import TrainingPair

    return [TrainingPair(image, labels, name) for name, image, labels in raw]


# ------------------------------------------------------------------ command line


def print_report(report: Report) -> None:
    title = f"== {report.name}" + (" (quick)" if report.quick else "")
    print(title, flush=True)
    if report.skipped:
        print(f"  skipped: {report.skipped}")
        return
    width = max([len(r.figure) for r in report.rows] + [10])
    for row in report.rows:
        target = f"target {row.target}: {_verdict(row.ok)}" if row.target else ""
        print(f"  {row.figure:<{width}}  {row.shown():>16}  {target}")
    for text in report.notes:
        print(f"  - {text}")
    if report.load:
        print(f"  - load: {describe_load(report.load)}")


def bench_main(name: str, run: Callable[[bool], Report], argv: Sequence[str] | None = None) -> int:
    """Command line of one benchmark module: `--quick`, `--json PATH`."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=(run.__doc__ or "").strip())
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"== {name}" + (" (quick)" if args.quick else "") + " ...", flush=True)
    t0 = time.monotonic()
    with LoadMonitor() as monitor:
        report = run(args.quick)
    report.name, report.quick = name, args.quick
    report.seconds = round(time.monotonic() - t0, 1)
    report.load = monitor.result
    report.machine = machine_info()
    report.date = report.machine["date"]
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    return 0
