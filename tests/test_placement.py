"""Where the pools run: custom resources, fake GPUs and an accelerator type on a simulated 3-node cluster.

Each test runs one real portrait through the whole pipeline (quick settings) and reads, from the
manifest row, which node, process and GPU each pool's worker had."""

import json

import pytest
import ray

from portrait3d.engine.batch import run_batch
from portrait3d.engine.cluster import connect
from portrait3d.engine.config import build_engine_config
from portrait3d.pipelines.config import build_profile_config
from portrait3d.testing import portrait_dataset

from .conftest import QUICK_HEAD

pytestmark = pytest.mark.slow


def one_head(tmp_path, engine):
    src = portrait_dataset(tmp_path / "in", portraits=1, broken=0)[0]
    s = run_batch(str(src), str(tmp_path / "out"), build_profile_config("fast", QUICK_HEAD), engine)
    (row,) = s.rows
    assert row["status"] == "ok", row["error_message"]
    return json.loads(row["workers_json"])


def test_pools_land_on_the_nodes_with_their_resources(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"cpu_node": 1}, "include_dashboard": False}
    )
    head_id = cluster.head_node.node_id
    geo = cluster.add_node(num_cpus=1, num_gpus=1, resources={"geometry_node": 1})
    tex = cluster.add_node(num_cpus=1, num_gpus=1, resources={"texture_node": 1, "accelerator_type:H100": 1})
    try:
        engine = build_engine_config(
            "fast",
            [
                'geometry.resources={"geometry_node": 1}',
                "geometry.num_gpus=1",
                'texture.resources={"texture_node": 1}',
                "texture.num_gpus=1",
                "texture.accelerator_type=H100",
                "analysis.num_cpus=0.5",
                'analysis.resources={"cpu_node": 0.5}',
                "export.num_cpus=0.5",
                'export.resources={"cpu_node": 0.5}',
            ],
        )
        assert connect(engine, address=cluster.address).startswith("3 nodes")  # as `--address` does
        w = one_head(tmp_path, engine)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert w["geometry"]["node_id"] == geo.node_id and w["geometry"]["gpu_ids"] == ["0"]
    assert w["texture"]["node_id"] == tex.node_id and w["texture"]["gpu_ids"] == ["0"]
    assert w["analysis"]["node_id"] == w["export"]["node_id"] == head_id
    assert w["analysis"]["gpu_ids"] == w["export"]["gpu_ids"] == []  # CPU pools get no GPU
