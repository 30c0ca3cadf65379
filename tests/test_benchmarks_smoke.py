"""Keeps the benchmark scripts from rotting: a --quick run of the cheap ones, and the results writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks._common import Report, check_target  # noqa: E402
from benchmarks.run_all import BEGIN, END, render_results, write_docs  # noqa: E402


def test_quick_run_of_startup_and_tiling(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    docs_before = (REPO / "docs" / "benchmarks.md").read_text() if (REPO / "docs" / "benchmarks.md").exists() else None
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--skip-gui", "--only", "startup,tiling"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("== summary", 1)[1]
    assert "FAILED" not in summary and "skipped" not in summary
    # TensorFlow stays out of `import napari_unet`, and tiling reproduces whole-image prediction.
    assert "TensorFlow/Keras modules loaded" in summary
    for line in summary.splitlines():
        if "TensorFlow/Keras modules loaded" in line or "max |p_tiled - p_whole|" in line:
            assert line.rstrip().endswith("met"), line
    assert "dask -> zarr: peak RSS" in summary
    # --quick never rewrites the recorded results.
    after = (REPO / "docs" / "benchmarks.md").read_text() if docs_before is not None else None
    assert after == docs_before


def test_eta_errors_are_judged_after_the_first_epoch_while_time_is_left():
    from benchmarks.eta import errors_after_first_epoch

    # (elapsed, eta, epoch, step) of a run that ended at 100 s.
    samples = [(5.0, 400.0, 1, 3), (20.0, 100.0, 2, 1), (60.0, 30.0, 3, 1), (95.0, 50.0, 4, 1)]
    errors = errors_after_first_epoch(samples, end=100.0)
    # Epoch 1 is ignored, and so is the last sample (5 s left): 100 vs 80 s left, 30 vs 40 s left.
    assert errors == [0.25, 0.25]


def test_quick_run_of_model_files(tmp_path):
    """The model-files benchmark runs, and its figures say what the replay store is for."""
    json_path = tmp_path / "model_files.json"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.model_files", "--quick", "--json", str(json_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {row["figure"]: row for row in json.loads(json_path.read_text())["rows"]}
    assert rows["CLI whole process / in-process"]["value"] > 0
    ratio = rows.get("model folder after 5 rounds: now / previous replay layout")
    if ratio is not None:  # needs ../shared/data/nuclei
        assert ratio["ok"] is True, ratio


def test_quick_run_of_precision(tmp_path):
    """The precision benchmark compares float32 with the policy "auto" picks, and checks the saved copy."""
    from napari_unet.core.model import cpu_has_bfloat16

    json_path = tmp_path / "precision.json"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.precision", "--quick", "--json", str(json_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {row["figure"]: row["value"] for row in json.loads(json_path.read_text())["rows"]}
    assert rows["8 filters, float32"] > 0
    if cpu_has_bfloat16():
        assert rows["8 filters, mixed_bfloat16"] > 0
        assert 0 < rows["max |p_mixed - p_float32|"] < 0.05  # the same network, at bfloat16 rounding


def test_quick_run_of_peers(tmp_path):
    """The peers benchmark trains each system briefly in its own process and scores it (a broken
    call into train() once went unnoticed until the full run)."""
    json_path = tmp_path / "peers.json"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--quick", "--json", str(json_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert not [n for n in report["notes"] if "failed" in n], report["notes"]
    rows = {row["figure"]: row["value"] for row in report["rows"]}
    if rows:  # needs ../shared/data
        assert 0 < rows["nuclei napari_unet: held-out Dice after 30 s"] <= 1
        assert 0 <= rows["nuclei napari_unet: held-out object F1@0.5 after 30 s"] <= 1


def test_targets_are_checked():
    assert check_target(0.91, ">= 0.9") is True
    assert check_target(0.89, ">= 0.9") is False
    assert check_target(5000, "< 4096 MiB") is False and check_target(99.0, "< 100 ms") is True
    assert check_target(0.0, "<= 0") is True
    assert check_target(1.0, "") is None and check_target("3 of 4", "> 0") is None


def test_docs_section_is_replaced_and_prose_kept(tmp_path):
    report = Report("throughput", date="2099-01-01 00:00 UTC", machine={"device": "cpu", "cpu": "Test CPU", "cores": 2})
    report.add("ratio ours / plain", 0.95, "", ">= 0.9")
    results = {"cpu": {"throughput": json.loads(json.dumps(report.to_dict()))}}
    text = render_results(results)
    assert "| throughput | ratio ours / plain | >= 0.9 | 0.950 | yes | pending |  |" in text
    assert "| throughput | ratio ours / plain | 0.950 | pending | >= 0.9 |" in text
    assert "Test CPU" in text and "GPU machine:** pending" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nProse before.\n\n{BEGIN}\nold table\n{END}\n\nProse after.\n")
    write_docs(results, doc)
    written = doc.read_text()
    assert "old table" not in written and "Prose before." in written and "Prose after." in written
    assert written.count(BEGIN) == 1 and "ratio ours / plain" in written
