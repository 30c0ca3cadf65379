"""The Review's cluster option: what it accepts, and the one-line reason for what it does not."""

from __future__ import annotations

import pytest

from napari_unet.core.errors import InputError
from napari_unet.core.cluster import cluster_target


def test_cluster_target_reads_local_workers_and_scheduler_addresses():
    assert cluster_target("local:3") == (3, None)
    assert cluster_target(" local ")[0] >= 1 and cluster_target("local")[1] is None
    assert cluster_target("10.0.0.5:8786") == (None, "tcp://10.0.0.5:8786")
    assert cluster_target("localhost:8786") == (None, "tcp://localhost:8786")  # a host, not "local"
    assert cluster_target("tls://sched.example.org:8786") == (None, "tls://sched.example.org:8786")


@pytest.mark.parametrize("bad", ["", "local:0", "local:x", "cluster", "tcp://host", "host:99999"])
def test_bad_cluster_values_are_refused_with_the_forms_that_work(bad):
    with pytest.raises(InputError, match=r"local|scheduler"):
        cluster_target(bad)
