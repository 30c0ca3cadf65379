"""Data loss: no user file is ever overwritten (issue 11, class 1).

The output policy (core/outputs.py): never write into a folder that holds inputs or labels, never
replace an existing file without --overwrite, keep outputs distinct when inputs share a name, remove
temporary files on every failure; stale `.saving-*` folders of dead processes go on the next save.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from reliability_helpers import blob_pair, file_hashes

from napari_unet.core import cli


@pytest.fixture
def user_data(tmp_path):
    """images/ and labels/ with two pairs, plus a second image folder whose file shares a name."""
    for sub in ("images", "labels", "more"):
        (tmp_path / sub).mkdir()
    for i, name in enumerate(("a", "b")):
        image, labels = blob_pair(64, 80, seed=40 + i)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", labels)
    tifffile.imwrite(tmp_path / "more" / "a.tif", blob_pair(64, 80, seed=50)[0])
    return tmp_path


def _predict(trained, *args):
    return cli.main(["predict", "--model", str(trained.path), *map(str, args)])


@pytest.mark.parametrize("target", ["labels", "images"])
def test_predict_refuses_an_output_folder_that_holds_inputs_or_labels(trained, user_data, target, capsys):
    before = file_hashes(user_data)
    out = user_data / target
    code = _predict(trained, "--images", user_data / "images", "--out", out)
    if target == "labels":  # labels are not inputs of predict, but they are the user's files: refused as existing
        err = capsys.readouterr().err
        assert code == 2 and "already exist" in err and "--overwrite" in err, err
    else:
        err = capsys.readouterr().err
        assert code == 2 and "holds input images or labels" in err, err
    assert file_hashes(user_data) == before


def test_overwrite_never_replaces_a_file_napari_unet_did_not_write(trained, user_data, capsys):
    """--out at the labels folder with --overwrite: the user's label files are not earlier results."""
    before = file_hashes(user_data)
    code = _predict(trained, "--images", user_data / "images", "--out", user_data / "labels", "--overwrite")
    err = capsys.readouterr().err
    assert code == 2 and "napari-unet did not write them" in err, err
    code = _predict(trained, "--images", user_data / "images", "--out", user_data / "images", "--overwrite")
    assert code == 2 and "holds input images or labels" in capsys.readouterr().err
    assert file_hashes(user_data) == before


def test_an_existing_output_file_is_kept_unless_overwrite(trained, user_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tif").write_bytes(b"my precious file")
    for extra in ([], ["--overwrite"]):
        assert _predict(trained, "--images", user_data / "images", "--out", out, *extra) == 2
        assert "a.tif already exist(s)" in capsys.readouterr().err
    assert (out / "a.tif").read_bytes() == b"my precious file" and not (out / "b.tif").exists()
    (out / "a.tif").unlink()
    assert _predict(trained, "--images", user_data / "images", "--out", out) == 0
    first = file_hashes(out)
    assert _predict(trained, "--images", user_data / "images", "--out", out) == 2  # results exist now
    assert "--overwrite" in capsys.readouterr().err and file_hashes(out) == first
    assert _predict(trained, "--images", user_data / "images", "--out", out, "--overwrite") == 0
    assert tifffile.imread(out / "a.tif").shape == (64, 80)


def test_inputs_with_the_same_name_get_distinct_outputs(trained, user_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(trained, "--images", user_data / "images", user_data / "more", "--out", out) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tif"))
    assert written == ["images/a.tif", "images/b.tif", "more/a.tif"]
    assert "3 label image(s) written" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_writes_nothing(trained, user_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(trained, "--images", user_data / "images", user_data / "more", "--out", out, "--dry-run") == 0
    printed = capsys.readouterr()
    assert "more/a.tif" in printed.out and "nothing was written" in printed.out
    assert "read as YX" in printed.err
    assert not out.exists()


@pytest.mark.parametrize("failure", ["disk full", "read-only", "interrupt"])
def test_a_failed_write_leaves_no_temporary_file(trained, user_data, tmp_path, monkeypatch, capsys, failure):
    out = tmp_path / "out"
    real = tifffile.imwrite

    def failing(path, *args, **kwargs):
        real(path, *args, **kwargs)  # a partial file exists when the failure hits
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC if failure == "disk full" else errno.EROFS, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(tifffile, "imwrite", failing)
    code = _predict(trained, "--images", user_data / "images", "--out", out)
    err = capsys.readouterr().err
    assert code == (130 if failure == "interrupt" else 2), err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir()] == [] if out.exists() else True


def test_an_output_path_that_is_a_file_or_not_writable_is_refused_before_the_model_loads(
    trained, user_data, tmp_path, monkeypatch, capsys
):
    from napari_unet.core import bundle, outputs

    monkeypatch.setattr(bundle, "load_bundle", lambda *a: pytest.fail("the model was loaded before the check"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert cli.main(["predict", "--model", "m", "--images", str(user_data / "images"), "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["predict", "--model", "m", "--images", str(user_data / "images"), "--out", str(a_file / "o")]) == 2
    assert "which is a file" in capsys.readouterr().err
    monkeypatch.setattr(outputs.os, "access", lambda *a: False)  # tests run as root: simulate a read-only folder
    assert cli.main(["predict", "--model", "m", "--images", str(user_data / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_write_labels_without_overwrite_never_replaces(tmp_path):
    from napari_unet.core.errors import OutputError
    from napari_unet.core.io import write_labels

    target = tmp_path / "x.tif"
    target.write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        write_labels(target, np.zeros((4, 4), np.uint8), overwrite=False)
    assert target.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]


# ---------------------------------------------------------------- model folders


def test_stale_saving_folders_of_dead_processes_go_on_the_next_save(trained, tmp_path):
    model_dir = tmp_path / "tiny"
    shutil.copytree(trained.path.parent, model_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = model_dir / f".saving-{dead_pid}-abc123"
    stale.mkdir()
    (stale / "model.keras").write_bytes(b"x" * 1000)
    live = model_dir / f".saving-{os.getpid()}-live"  # a save in progress in this very process
    live.mkdir()
    trained.result.save(tmp_path, "tiny")
    assert not stale.exists() and live.exists()


def test_version_folders_follow_the_umask(trained, tmp_path):
    old = os.umask(0o022)
    try:
        path = trained.result.save(tmp_path, "shared")
    finally:
        os.umask(old)
    assert (os.stat(path).st_mode & 0o777) == 0o755
    assert all(os.stat(p).st_mode & 0o044 == 0o044 for p in path.rglob("*") if p.is_file())
