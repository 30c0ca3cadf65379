"""Export for bioimage.io… from the Predict and Fine-tune widgets: a real export in the compute worker."""

from __future__ import annotations

import sys
import zipfile

import pytest

pytestmark = pytest.mark.gui


def _loaded_predict_widget(viewer, qtbot, dock, path):
    widget = dock(viewer, "Predict")
    assert widget.load_model(path)
    qtbot.waitUntil(lambda: not widget.load_job.running, timeout=120_000)
    qtbot.wait(20)
    return widget


def test_export_dialog_writes_a_valid_package(sample_viewer, qtbot, dock, tiny_model, tmp_path, messages):
    from bioimageio.spec import load_description

    widget = _loaded_predict_widget(sample_viewer, qtbot, dock, tiny_model)
    assert widget.export_button.isEnabled()
    dialog = widget.open_export()
    assert dialog is not None and dialog.isVisible()
    dialog.authors.setText("Ada Tester <ada@example.org>; Bo Second")
    dialog.license.setCurrentText("MIT")
    dialog.cite.setText("Our nuclei paper, doi:10.1000/nuclei.1")
    dialog.sample.setCurrentText("nuclei")
    out = tmp_path / "shared" / "tiny.zip"
    dialog.out.setText(str(out))
    assert dialog.export()
    assert not dialog.export_button.isEnabled() and dialog.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not dialog.job.running, timeout=300_000)
    qtbot.wait(20)
    assert messages("error") == []
    assert dialog.outcome is not None and dialog.outcome.path == str(out) and out.is_file()
    assert dialog.progress.value() == 1000 and "Exported tiny v1" in dialog.status.text()
    assert any(str(out) in m for m in messages("info"))
    # Validated here with bioimageio.spec (no TensorFlow enters the viewer's process).
    descr = load_description(out, perform_io_checks=True)
    assert descr.validation_summary.status in ("valid-format", "passed")
    assert [a.name for a in descr.authors] == ["Ada Tester", "Bo Second"] and str(descr.license) == "MIT"
    assert str(descr.cite[0].doi) == "10.1000/nuclei.1"
    assert sorted(descr.weights.available_formats) == ["keras_hdf5", "onnx", "tensorflow_saved_model_bundle"]
    with zipfile.ZipFile(out) as zf:
        assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= set(zf.namelist())
    assert "tensorflow" not in sys.modules


def test_export_dialog_refuses_bad_entries_before_any_job(sample_viewer, qtbot, dock, tiny_model, tmp_path, messages):
    widget = _loaded_predict_widget(sample_viewer, qtbot, dock, tiny_model)
    dialog = widget.open_export()
    dialog.out.setText(str(tmp_path / "p.zip"))
    assert not dialog.export() and not dialog.job.running
    assert "Give at least one author" in messages("error")[-1]
    dialog.authors.setText("Ada")
    dialog.license.setCurrentText("GPL")
    assert not dialog.export()
    assert "not an SPDX licence identifier" in messages("error")[-1] and "GPL-2.0-only" in dialog.status.text()
    dialog.cite.setText("a paper without a link")
    dialog.license.setCurrentText("MIT")
    assert not dialog.export() and "needs a DOI" in messages("error")[-1]
    dialog.cite.setText("")
    (tmp_path / "p.zip").write_bytes(b"someone's file")
    assert not dialog.export() and "already exists" in messages("error")[-1]
    dialog.overwrite.setChecked(True)
    assert not dialog.export() and "never replaced" in messages("error")[-1]
    assert (tmp_path / "p.zip").read_bytes() == b"someone's file"


def test_finetune_widget_offers_the_export_of_the_current_version(sample_viewer, qtbot, dock, tiny_model):
    _loaded_predict_widget(sample_viewer, qtbot, dock, tiny_model)
    finetune = dock(sample_viewer, "Fine-tune")
    assert finetune.export_button.isEnabled()
    dialog = finetune.open_export()
    assert dialog is not None and dialog.entry.path == tiny_model
    assert dialog.out.text().endswith("tiny-v001.bioimageio.zip")
    dialog.close()
