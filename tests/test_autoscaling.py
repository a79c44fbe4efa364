"""The service's autoscaling, shown on a simulated autoscaling Ray cluster (Ray's fake multi-node
provider) whose node types are the gpu-prod RayService's worker groups, fake GPUs and accelerator
types included: a burst of jobs scales the geometry and texture deployments up from zero, the
autoscaler adds GPU nodes of each group, every job is done, and after idle the GPU nodes go away."""

from __future__ import annotations

import pytest

from portrait3d.serve_app.simulate import run_burst
from portrait3d.testing import distinct_portraits

from .conftest import QUICK_HEAD, free_port
from .k8s import by_kind, render

pytestmark = pytest.mark.slow

GPU_GROUPS = ("gpu-geometry", "gpu-texture")


def test_burst_scales_gpu_groups_from_zero_and_back(tmp_path):
    service = by_kind(render("overlays/gpu-prod"), "RayService")[0]
    timeline = run_burst(
        service,
        distinct_portraits(2),
        data=str(tmp_path / "data"),
        port=free_port(),
        settings=QUICK_HEAD,
        max_replicas=2,
        idle_timeout_s=5,
        timeout_s=600,
    )
    print(timeline.table(("analysis", "geometry", "texture", "export"), ("cpu", *GPU_GROUPS)))
    rows = timeline.rows
    first, last = rows[0], rows[-1]
    # before the burst: no GPU node and no GPU replica; the CPU group at its minimum
    assert all(first["nodes"][g] == 0 for g in GPU_GROUPS) and first["nodes"]["cpu"] == 1
    assert first["replicas"]["geometry"] == first["replicas"]["texture"] == 0
    # during it: both GPU deployments scaled up, on nodes of their own group
    for pool, group in (("geometry", "gpu-geometry"), ("texture", "gpu-texture")):
        assert max(r["replicas"][pool] for r in rows) >= 1, pool
        assert max(r["nodes"][group] for r in rows) >= 1, group
    # every job done
    assert [s["status"] for s in timeline.statuses.values()] == ["done"] * 2, timeline.statuses
    # after idle: back to zero GPU replicas and zero GPU nodes
    assert last["replicas"]["geometry"] == last["replicas"]["texture"] == 0
    assert all(last["nodes"][g] == 0 for g in GPU_GROUPS), last
