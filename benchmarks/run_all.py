"""Run the benchmarks, print one table, and record the results in docs/benchmarks.md.

    python -m benchmarks [--quick] [--only startup,tiling] [--skip-gui] [--no-save]
    python benchmarks/run_all.py ...

Every benchmark runs in its own Python process (`python -m benchmarks.<name> --json FILE`), so
memory figures and TensorFlow state do not leak from one into the next. GUI benchmarks run under
`xvfb-run` when there is no display. Full runs (not --quick) store their reports in
benchmarks/results.json, per device kind (cpu / gpu), and rewrite the results section of
docs/benchmarks.md from it; a run of some benchmarks keeps the others' last results.
Missing targets do not fail the run (use --strict for that); a crashed benchmark does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, Report, Row, describe_load

BENCHMARKS: tuple[str, ...] = (
    "startup", "throughput", "tiling", "cluster", "quality", "peers", "hitl", "gui_responsiveness", "load", "uncertainty_ranking", "eta",
    "model_files", "live_annotator", "precision",
)
GUI_BENCHMARKS = frozenset({"gui_responsiveness"})
BENCH_DIR = REPO / "benchmarks"
RESULTS = BENCH_DIR / "results.json"
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN RESULTS: written by benchmarks/run_all.py, do not edit by hand -->"
END = "<!-- END RESULTS -->"


def _command(name: str, json_path: Path, quick: bool) -> list[str]:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json", str(json_path)]
    if quick:
        cmd.append("--quick")
    if name in GUI_BENCHMARKS and not os.environ.get("DISPLAY") and shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
    return cmd


def _stream(cmd: list[str]) -> tuple[int, list[str]]:
    """Run a command in the repository, echoing its output; (exit code, last lines)."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": pythonpath}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if _noise(line):
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
        tail = (tail + [line.rstrip()])[-15:]
    return proc.wait(), tail


def run_one(name: str, quick: bool) -> tuple[Report, bool]:
    """Run one benchmark in a child process, echoing its output; (report, crashed)."""
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as tmp:
        json_path = Path(tmp) / f"{name}.json"
        code, tail = _stream(_command(name, json_path, quick))
        if code == 0 and json_path.is_file():
            return Report.from_dict(json.loads(json_path.read_text())), False
    report = Report(name, quick=quick)
    if code == 2 and any("unrecognized arguments" in line for line in tail):
        # A script that does not follow the --json protocol: run it plainly and keep its output.
        code, tail = _stream([a for a in _command(name, Path(), quick) if a not in ("--json", ".")])
        report.notes = [line for line in tail if line.strip()]
        if code == 0:
            report.rows.append(Row("output (the script writes no --json report)", tail[-1] if tail else ""))
            return report, False
    report.skipped = f"FAILED (exit code {code}): " + " | ".join(tail[-5:])
    return report, True


_NOISE = (
    "oneDNN custom operations",
    "absl::InitializeLog",
    "data_adapters.get_data_adapter(",
    "UserWarning: `shuffle=True`",
)


def _noise(line: str) -> bool:
    """TensorFlow's start-up chatter, which TF_CPP_MIN_LOG_LEVEL does not silence."""
    return any(s in line for s in _NOISE)


def table(reports: Sequence[Report]) -> str:
    lines = [f"{'benchmark':<12} {'figure':<66} {'value':>18}  target"]
    for rep in reports:
        if rep.skipped:
            lines.append(f"{rep.name:<12} {'skipped: ' + rep.skipped}")
            continue
        for row in rep.rows:
            verdict = {True: "met", False: "MISSED", None: ""}[row.ok]
            target = f"{row.target} {verdict}" if row.target else ""
            lines.append(f"{rep.name:<12} {row.figure[:66]:<66} {row.shown():>18}  {target}")
    return "\n".join(lines)


# ------------------------------------------------------------------ results file and docs


def load_results(path: Path = RESULTS) -> dict[str, dict[str, dict]]:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; starting a new one")
    return {}


def save_results(reports: Sequence[Report], path: Path = RESULTS) -> dict[str, dict[str, dict]]:
    """Merge full-run reports into the results file under their device kind; return everything."""
    results = load_results(path)
    for rep in reports:
        if rep.quick or (rep.skipped and rep.skipped.startswith("FAILED")):
            continue
        device = rep.machine.get("device", "cpu")
        results.setdefault(device, {})[rep.name] = rep.to_dict()
    path.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _machine_line(machine: dict) -> str:
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} usable cores, {machine.get('ram_gb', '?')} GB RAM, "
        f"GPU: {machine.get('gpu', 'none')}; TensorFlow {machine.get('tensorflow', '?')}, "
        f"Keras {machine.get('keras', '?')}, NumPy {machine.get('numpy', '?')}, Python {machine.get('python', '?')}, "
        f"{machine.get('os', '?')}"
    )


def render_results(results: dict[str, dict[str, dict]]) -> str:
    """Markdown of the stored results: machines, one table with CPU and GPU columns, notes."""
    cpu = {n: Report.from_dict(r) for n, r in results.get("cpu", {}).items()}
    gpu = {n: Report.from_dict(r) for n, r in results.get("gpu", {}).items()}
    order = [n for n in BENCHMARKS if n in cpu or n in gpu] + sorted((set(cpu) | set(gpu)) - set(BENCHMARKS))
    out = ["## Latest results", ""]
    for kind, reports in (("CPU", cpu), ("GPU", gpu)):
        machines = {_machine_line(r.machine) for r in reports.values() if r.machine}
        if machines:
            out.append(f"**{kind} machine:** " + "; ".join(sorted(machines)) + ".")
        else:
            out.append(f"**{kind} machine:** pending: no {kind} run recorded yet"
                       + (" (no GPU was available to the session that measured the CPU figures)." if kind == "GPU" else "."))
        out.append("")
    met = {True: "yes", False: "**no**", None: ""}
    out += ["### Targets", "", "| Benchmark | Figure | Target | CPU | met | GPU | met |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in order:
        for reports in (cpu, gpu):
            if name not in reports:
                continue
            for row in reports[name].rows:
                if not row.target or (reports is gpu and name in cpu):
                    continue
                cpu_row = _find(cpu, name, row.figure)
                gpu_row = _find(gpu, name, row.figure)
                out.append(
                    f"| {name} | {_cell(row.figure)} | {_cell(row.target)} | {_shown(cpu_row)} | "
                    f"{met[cpu_row.ok] if cpu_row else ''} | {_shown(gpu_row)} | {met[gpu_row.ok] if gpu_row else ''} |"
                )
    out += ["", "### All figures", "", "| Benchmark | Figure | CPU | GPU | Target |", "| --- | --- | --- | --- | --- |"]
    for name in order:
        base = cpu.get(name) or gpu.get(name)
        if base.skipped and not base.rows:
            out.append(f"| {name} | skipped: {_cell(base.skipped)} | | | |")
            continue
        for row in base.rows:
            out.append(
                f"| {name} | {_cell(row.figure)} | {_shown(_find(cpu, name, row.figure))} | "
                f"{_shown(_find(gpu, name, row.figure))} | {_cell(row.target)} |"
            )
    out += ["", "### Run details", ""]
    for name in order:
        for kind, reports in (("CPU", cpu), ("GPU", gpu)):
            rep = reports.get(name)
            if rep is None:
                continue
            out.append(f"**{name}** ({kind}, {rep.date}, {rep.seconds:.0f} s; {describe_load(rep.load)}):")
            out.append("")
            out += [f"- {_cell(note).replace('<', '&lt;')}" for note in rep.notes] or ["- (no notes)"]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _find(reports: dict[str, Report], name: str, figure: str) -> Row | None:
    return next((row for row in reports[name].rows if row.figure == figure), None) if name in reports else None


def _shown(row: Row | None) -> str:
    return _cell(row.shown()) if row is not None else "pending"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_docs(results: dict[str, dict[str, dict]], path: Path = DOCS) -> None:
    """Replace the results section of docs/benchmarks.md (between the markers), keeping the prose."""
    block = f"{BEGIN}\n{render_results(results)}{END}"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# ------------------------------------------------------------------ command line


def available() -> list[str]:
    """The six benchmarks of the suite, then any other benchmarks/*.py that uses `bench_main`."""
    extras = sorted(
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if not path.stem.startswith("_")
        and path.stem not in (*BENCHMARKS, "run_all", "presets")
        and "return bench_main(" in path.read_text()
    )
    return list(BENCHMARKS) + extras


def _selected(only: str | None, skip_gui: bool) -> list[str]:
    names = available()
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(names)}")
        names = [n for n in names if n in wanted]
    if skip_gui:
        names = [n for n in names if n not in GUI_BENCHMARKS]
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test; results are not saved")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ",".join(available()))
    parser.add_argument("--skip-gui", action="store_true", help="leave out benchmarks that need a display")
    parser.add_argument("--no-save", action="store_true", help="do not update benchmarks/results.json and the docs")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a target is missed")
    args = parser.parse_args(argv)
    reports, crashed = [], False
    for name in _selected(args.only, args.skip_gui):
        if name in GUI_BENCHMARKS and not (BENCH_DIR / f"{name}.py").is_file():
            reports.append(Report(name, quick=args.quick, skipped=f"benchmarks/{name}.py is not written yet"))
            continue
        report, failed = run_one(name, args.quick)
        crashed |= failed
        reports.append(report)
    print("\n== summary" + (" (quick: not saved)" if args.quick else ""))
    print(table(reports))
    for rep in reports:
        if rep.load:
            print(f"  {rep.name}: {rep.seconds:.0f} s; {describe_load(rep.load)}")
    if not args.quick and not args.no_save:
        write_docs(save_results(reports))
        print(f"results saved to {RESULTS.relative_to(REPO)} and {DOCS.relative_to(REPO)}")
    missed = any(row.ok is False for rep in reports for row in rep.rows)
    return 1 if crashed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
