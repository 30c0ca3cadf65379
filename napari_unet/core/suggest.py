"""Defaults that follow the data: the task a labels layer suggests (numpy and scipy only, no TensorFlow)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: An id whose pixels form one connected piece, covering less than this share of the plane, looks
#: like an object (a nucleus, a cell); class regions are larger or scattered over many pieces.
OBJECT_AREA_SHARE = 0.05
#: Share of ids that must look like objects for "instances".
OBJECT_ID_SHARE = 0.8
#: More ids than this can only be instances (a class map has a few ids).
MANY_IDS = 64


def suggest_task(labels: np.ndarray, ignore_label: int | None = None) -> str:
    """"binary", "classes" or "instances" for a label image `(H, W)` or a stack `(N, H, W)`.

    * no labels, or only the ids {0, 1} (or {0, k}: one painted value): binary;
    * two or more ids that mostly look like objects (each one connected piece, small next to the
      image), or more than `MANY_IDS` ids: instances;
    * otherwise (a few ids covering large or scattered regions): classes.
    """
    lab = np.asarray(labels)
    if lab.dtype == bool:
        return "binary"
    if lab.ndim == 2:
        lab = lab[None]
    lab = lab.reshape((-1,) + lab.shape[-2:])
    if ignore_label is not None:
        lab = np.where(lab == ignore_label, 0, lab)
    ids = np.unique(lab)
    ids = ids[ids > 0]
    if ids.size <= 1:
        return "binary"
    if ids.size > MANY_IDS:
        return "instances"
    plane_area = lab.shape[1] * lab.shape[2]
    looks_like_object = 0
    for value in ids.tolist():
        most_pieces, largest = 0, 0
        for plane in lab:
            mask = plane == value
            if not mask.any():
                continue
            most_pieces = max(most_pieces, ndi.label(mask)[1])
            largest = max(largest, int(mask.sum()))
        # An instance id is one piece in each plane it occurs in (a stray second piece is tolerated).
        if most_pieces <= 2 and largest < OBJECT_AREA_SHARE * plane_area:
            looks_like_object += 1
    if looks_like_object >= OBJECT_ID_SHARE * ids.size:
        return "instances"
    return "classes"
