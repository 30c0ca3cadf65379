"""Arrays between the viewer and the compute worker: `take` hands over a file without copying it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_unet.jobs import arrays


def test_take_hands_over_the_array_and_deletes_its_file(tmp_path):
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ref = arrays.put(tmp_path, labels)
    taken = arrays.take(ref)
    assert not Path(ref.path).exists()  # the scratch file is gone at once
    assert np.array_equal(taken, labels) and taken.dtype == np.uint16
    taken[0, 0] = 99  # a labels layer the user paints on must be writable
    assert taken[0, 0] == 99 and labels[0, 0] == 0
    assert np.array_equal(np.asarray(taken[1:]), labels[1:])
