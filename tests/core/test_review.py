"""Review projects: index, statuses, masks, export, bad input, uncertainty scores and whether they mean anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.core import review as rv
from napari_unet.core.config import Config
from napari_unet.core.errors import InputError, NapariUNetError

N_TRAIN = 8  # first 256x256 gray nuclei images train the model; the rest are held out


def _prediction(labels: np.ndarray, uncertainty: float = 0.1) -> rv.ItemPrediction:
    labels = labels.astype(np.int32)
    probs = (labels > 0).astype(np.float32)[..., None]
    return rv.ItemPrediction(
        labels, probs, np.full(labels.shape, uncertainty, np.float32), uncertainty, float((labels > 0).mean()), 3
    )


@pytest.fixture
def image_folder(tmp_path, nuclei_pairs):
    folder = tmp_path / "day1"
    folder.mkdir()
    for name, image, _ in nuclei_pairs[:4]:
        tifffile.imwrite(folder / f"{name}.tif", image)
    import imageio.v3 as iio

    iio.imwrite(folder / "plate_b.png", nuclei_pairs[4][1])
    return folder


def test_every_decision_is_saved_and_a_reopened_review_resumes(tmp_path, image_folder, nuclei_pairs):
    project = rv.ReviewProject.open(tmp_path / "review")
    added = project.add_files([image_folder])
    assert len(added) == 5 and project.add_files([image_folder]) == []  # known files are not added twice
    for i, name in enumerate(added):
        project.record_prediction(name, _prediction(nuclei_pairs[0][2] > 0, 0.1 * i), "/models/m/v001", 1)
    a, c, r = added[0], added[1], added[4]
    project.accept(a)
    edited = project.prediction(c).copy()
    edited[:20, :20] = 7
    project.correct(c, edited)
    project.reject(r)

    again = rv.ReviewProject.open(tmp_path / "review")
    assert [again.item(n).status for n in added] == ["accepted", "corrected", "unreviewed", "unreviewed", "rejected"]
    np.testing.assert_array_equal(again.mask(c), edited)
    np.testing.assert_array_equal(again.mask(a), project.prediction(a))
    assert again.item(c).model == "/models/m/v001" and again.item(c).model_version == 1
    assert again.ranked()[0] == added[4]  # highest uncertainty first
    np.testing.assert_allclose(again.uncertainty_map(added[2]), 0.2, atol=1e-3)
    assert not [p for p in (tmp_path / "review").iterdir() if p.name.endswith(".tmp")]
    json.loads((tmp_path / "review" / rv.INDEX_FILE).read_text())

    out = again.export(tmp_path / "export")
    assert sorted(p.name for p in out) == sorted(f"{n}.tif" for n in (a, c))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "export" / f"{c}.tif"), edited)
    assert len(again.training_pairs()) == 1 and again.training_pairs()[0].name == c


def test_accepting_a_corrected_image_keeps_it_corrected(tmp_path, image_folder, nuclei_pairs):
    project = rv.ReviewProject.open(tmp_path / "review")
    name = project.add_files([image_folder])[0]
    project.record_prediction(name, _prediction(nuclei_pairs[0][2]), None, None)
    project.correct(name, np.zeros((256, 256), np.int32))
    project.accept(name, np.ones((256, 256), np.int32))
    assert project.item(name).status == "corrected"
    assert project.mask(name).max() == 1


def test_layer_images_are_copied_so_the_review_survives_napari(tmp_path, nuclei_pairs):
    project = rv.ReviewProject.open(tmp_path / "review")
    image = nuclei_pairs[0][1]
    name = project.add_array("stack/plane 3", image)
    assert name == "stack_plane_3" and project.add_array("stack/plane 3", image) == name
    again = rv.ReviewProject.open(tmp_path / "review")
    np.testing.assert_array_equal(again.load_image(name), image)


def test_unreadable_file_is_marked_with_its_reason_and_the_rest_stays(tmp_path, image_folder):
    (image_folder / "broken.tif").write_bytes(b"not a tiff at all")
    project = rv.ReviewProject.open(tmp_path / "review")
    project.add_files([image_folder])
    broken = project.item("broken")
    assert broken.status == "error" and "broken.tif" in broken.error
    assert project.counts()["unreviewed"] == 5
    assert project.ranked()[-1] == "broken"
    assert "broken" in project.to_predict()  # tried again by the next prediction run
    with pytest.raises(InputError, match="could not be predicted"):
        project.accept("broken")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    project = rv.ReviewProject.open(tmp_path / "review")
    with pytest.raises(InputError, match="No image files"):
        project.add_files([tmp_path / "empty"])


def test_folder_that_cannot_be_written_is_a_clear_error(tmp_path):
    # Tests run as root, for whom chmod does not block writes: a folder under a regular file
    # (and one under /proc) cannot be created by anyone.
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("x")
    for folder in (blocker / "review", Path("/proc/napari-unet-review")):
        with pytest.raises(InputError, match="Choose another folder"):
            rv.ReviewProject.open(folder)


def test_damaged_index_is_a_clear_error(tmp_path):
    folder = tmp_path / "review"
    folder.mkdir()
    (folder / rv.INDEX_FILE).write_text("{ half written")
    with pytest.raises(InputError, match="damaged"):
        rv.ReviewProject.open(folder)


def test_nothing_to_review_before_prediction(tmp_path, image_folder):
    project = rv.ReviewProject.open(tmp_path / "review")
    name = project.add_files([image_folder])[0]
    with pytest.raises(InputError, match="no prediction yet"):
        project.accept(name)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NapariUNetError, match="[Cc]hoose"):
        project.export(blocker / "export")


def test_review_sample_explains_channel_mismatches():
    gray, rgb = np.zeros((64, 80), np.uint8), np.zeros((64, 80, 3), np.uint8)
    assert rv.review_sample(gray, 1, "g").shape == (64, 80, 1)
    assert rv.review_sample(gray[..., None], 1, "g").shape == (64, 80, 1)
    assert rv.review_sample(gray, 3, "g").shape == (64, 80, 3)
    assert rv.review_sample(np.zeros((64, 80, 4), np.uint8), 3, "rgba").shape == (64, 80, 3)
    with pytest.raises(InputError, match=r"rgb\.png is RGB \(3 channels\) but the model expects 1"):
        rv.review_sample(rgb, 1, "rgb.png")
    with pytest.raises(InputError, match="one 2D image"):
        rv.review_sample(np.zeros((5, 64, 80), np.uint8), 1, "stack")


def test_uncertainty_scores():
    p = np.full((8, 8, 1), 0.5, np.float32)
    score, emap = rv.uncertainty_score(p, "entropy")
    assert score == pytest.approx(1.0, abs=1e-4) and emap.shape == (8, 8)
    assert rv.uncertainty_score(np.full((8, 8, 1), 1e-9, np.float32), "entropy")[0] < 1e-4
    softmax = np.zeros((8, 8, 3), np.float32)
    softmax[..., 1] = 1
    assert rv.uncertainty_score(softmax, "entropy")[0] < 1e-4

    half = np.zeros((8, 8, 1), np.float32)
    half[:4] = 0.9
    same = {name: half for name in rv.AUGMENTATIONS}
    assert rv.uncertainty_score(half, "tta", same)[0] == 0
    other = np.zeros((8, 8, 1), np.float32)
    other[4:] = 0.9
    score, umap = rv.uncertainty_score(half, "flip", {"flip": other})
    assert score == 1.0 and umap.max() == pytest.approx(0.9)
    score, _ = rv.uncertainty_score(half, "tta", {"flip": other, "darker": half, "brighter": half})
    assert score == pytest.approx(1 / 3)
    with pytest.raises(InputError, match="darker"):
        rv.uncertainty_score(half, "intensity", {"flip": other})


# ---------------------------------------------------------------- with a real (tiny) model


def tiny_config(seed: int = 0) -> Config:
    """Same as benchmarks/uncertainty_ranking.py's tiny model."""
    return Config().replace(
        model={"depth": 2, "base_filters": 8},
        data={"patch_size": 64, "val_fraction": 0.2},
        train={"batch_size": 8, "steps_per_epoch": 20, "epochs": 15, "learning_rate": 3e-3, "seed": seed},
        predict={"tile_size": 256, "overlap": 32},
    )


@pytest.fixture(scope="module")
def model_bundle(nuclei_pairs, tmp_path_factory):
    """A tiny binary model trained on the first 8 gray 256x256 nuclei images, saved as v001."""
    from napari_unet.core.bundle import load_bundle
    from napari_unet.core.data import TrainingPair
    from napari_unet.core.train import train

    pairs = [TrainingPair(image, labels, name) for name, image, labels in nuclei_pairs[:N_TRAIN]]
    result = train(pairs, tiny_config())
    return load_bundle(result.save(tmp_path_factory.mktemp("models"), "nuclei"))


def test_uncertainty_ranks_bad_predictions_first(model_bundle, nuclei_pairs):
    """On held-out images, the most uncertain third has a lower Dice than the least uncertain third."""
    from napari_unet.core.scores import dice_score

    held = nuclei_pairs[N_TRAIN:][::2]  # 16 images: 256x256 up to 520x696, sparse and dense
    dice, scores = [], []
    for name, image, gt in held:
        pred = rv.predict_for_review(model_bundle.model, image, model_bundle.config, rv.DEFAULT_METHOD, name=name)
        dice.append(dice_score(pred.labels > 0, gt > 0))
        scores.append(pred.uncertainty)
    order = np.argsort(-np.array(scores))
    dice = np.array(dice)
    third = len(held) // 3
    worst, best = dice[order[:third]].mean(), dice[order[-third:]].mean()
    assert worst < best - 0.05, (worst, best, dict(zip([h[0] for h in held], np.round(dice, 3))))


def test_predicting_a_mixed_folder_and_finetuning_on_corrections(
    tmp_path, model_bundle, nuclei_pairs, nuclei_rgb_pairs
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    truth = {}
    for name, image, labels in (nuclei_pairs[N_TRAIN], nuclei_pairs[20]):  # 256x256 and a larger one
        tifffile.imwrite(folder / f"{name}.tif", image)
        truth[name] = labels
    tifffile.imwrite(folder / "stained.tif", nuclei_rgb_pairs[0][1])
    tifffile.imwrite(folder / "tiny.tif", nuclei_pairs[9][1][:2, :2])
    project = rv.ReviewProject.open(tmp_path / "review")
    project.add_files([folder])
    done = list(rv.predict_items(project, model_bundle, project.to_predict()))
    errors = {d.name: d.error for d in done if d.error}
    assert set(errors) == {"stained", "tiny"}
    assert "RGB" in errors["stained"] and "channel" in errors["stained"]
    assert "at least 4 pixels" in errors["tiny"]
    ok = [d.name for d in done if d.prediction is not None]
    assert len(ok) == 2 and all(project.item(n).predicted_ok for n in ok)
    assert project.item(ok[0]).model_version == 1 and project.item(ok[0]).uncertainty > 0

    with pytest.raises(InputError, match="No corrected images"):
        rv.finetune_on_reviewed(project, model_bundle)
    name = ok[0]
    project.correct(name, truth[name])
    quick = dataclasses.replace(model_bundle, config=model_bundle.config.replace(train={"steps_per_epoch": 5}))
    result, path = rv.finetune_on_reviewed(project, quick, epochs=1)
    assert path is not None and path.name == "v002" and path.parent == Path(model_bundle.path).parent
    assert result.training_data[-1]["name"] == name

    from napari_unet.core.bundle import load_bundle

    child = load_bundle(path)
    redone = list(rv.predict_items(project, child, project.with_status("unreviewed"), only_unreviewed=True))
    assert [d.name for d in redone if d.prediction is not None] == [n for n in ok if n != name]
    assert project.item(ok[1]).model_version == 2 and project.item(name).model_version == 1


def test_export_follows_the_output_policy(tmp_path, nuclei_pairs):
    """Never next to the images, never over an existing file, distinct names for same-named images."""
    from napari_unet.core.errors import OutputError

    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        tifffile.imwrite(images / sub / "same.tif", nuclei_pairs[0][1][:64, :64])
    project = rv.ReviewProject.open(tmp_path / "review")
    names = project.add_files([images / "a", images / "b"])
    for name in names:
        project.record_prediction(name, _prediction(nuclei_pairs[0][2][:64, :64] > 0), None, None)
        project.accept(name)
    before = sorted(p.name for p in images.rglob("*"))
    with pytest.raises(OutputError, match="holds input images"):
        project.export(images / "a")
    with pytest.raises(OutputError, match="holds input images"):
        project.export(tmp_path / "review")
    written = project.export(tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["a/same.tif", "b/same.tif"]
    with pytest.raises(OutputError, match="already exist"):
        project.export(tmp_path / "out")
    assert len(project.export(tmp_path / "out", overwrite=True)) == 2
    assert sorted(p.name for p in images.rglob("*")) == before
