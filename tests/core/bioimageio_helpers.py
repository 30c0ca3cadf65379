"""What the bioimage.io export and import tests share: the tasks and a tiny model's config."""

TASKS = ("binary", "classes", "instances")
#: Trains in seconds on a few nuclei images; depth 2 keeps the packages' size multiple small.
TINY = {
    "model": {"depth": 2, "base_filters": 4},
    "data": {"patch_size": 64, "val_fraction": 0.34, "n_classes": 3},
    "train": {"batch_size": 4, "steps_per_epoch": 5, "epochs": 1, "early_stopping_min_s": 0},
    "predict": {"tile_size": 128, "overlap": 32},
}
