"""Shared fixtures: the one GPU-or-skip decision, backends, a Dask cluster."""

import os

import pytest
from hypothesis import HealthCheck, settings

import kullback

# Timings swing on shared machines: no deadlines. CI runs a fixed number of
# examples; KULLBACK_HYPOTHESIS_EXAMPLES raises it for a longer local run.
settings.register_profile(
    "kullback",
    max_examples=int(os.environ.get("KULLBACK_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.load_profile("kullback")

REQUIRE_GPU = os.environ.get("KULLBACK_REQUIRE_GPU", "") not in ("", "0")


def gpu_or_skip():
    """The GPU adapter, or a skip; a failure under KULLBACK_REQUIRE_GPU=1 (as
    the Rust tests' tests/common::gpu_or_skip): GPU tests never pass by
    skipping in CI."""
    adapter = kullback.backends()["gpu"]
    if adapter is None:
        msg = ("no GPU adapter (install mesa-vulkan-drivers for lavapipe, Mesa's "
               "software Vulkan driver)")
        if REQUIRE_GPU:
            pytest.fail("KULLBACK_REQUIRE_GPU=1: " + msg)
        pytest.skip(msg)
    return adapter


@pytest.fixture(params=["cpu", "gpu"])
def backend(request):
    """Each test with this fixture runs on the CPU and on the GPU (lavapipe counts)."""
    if request.param == "gpu":
        gpu_or_skip()
    return request.param


@pytest.fixture(scope="session")
def dask_client():
    """A real distributed cluster: 2 worker processes of one thread each."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit="4GiB")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
