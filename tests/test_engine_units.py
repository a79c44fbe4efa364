"""Engine pieces that need no Ray: pool config, input listing, the stage-output codec, rows."""

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from portrait3d.engine.batch import list_inputs
from portrait3d.engine.config import build_engine_config, local_cpus
from portrait3d.engine.rows import MANIFEST_SCHEMA, manifest_table, mark_error, new_row
from portrait3d.errors import BundleError, ConfigError, InputError
from portrait3d.pipelines.codec import decode, encode
from portrait3d.pipelines.types import HeadMesh, PortraitAnalysis


def test_pool_config_overrides_and_remote_args(tmp_path):
    cfg = build_engine_config(
        "fast",
        [
            "geometry.num_gpus=1",
            "geometry.accelerator_type=H100",
            'texture.resources={"texture_node": 1}',
            "batch.max_task_retries=5",
        ],
    )
    geo = cfg.pools["geometry"].remote_args()
    assert geo == {"num_cpus": 1.0, "num_gpus": 1.0, "accelerator_type": "H100"}
    assert cfg.pools["texture"].remote_args()["resources"] == {"texture_node": 1.0}
    assert cfg.batch.max_task_retries == 5
    f = tmp_path / "pools.json"
    f.write_text(json.dumps({"analysis": {"max_size": 3}}))
    assert build_engine_config("fast", [str(f)], workers=2).pools["analysis"].max_size == 3
    two = build_engine_config("fast", workers=2)
    assert {p: (c.min_size, c.max_size) for p, c in two.pools.items()} == {
        "analysis": (2, 2),
        "geometry": (2, 2),
        "texture": (2, 2),
        "export": (1, 1),
    }
    assert build_engine_config("paper").pools["geometry"].num_gpus == 1


@pytest.mark.parametrize(
    "bad",
    [
        "gpu.num_cpus=1",
        "geometry.num_gpu=1",
        "geometry.num_cpus=lots",
        "geometry.min_size=3",
        "texture.resources=[1]",
        "batch.max_input_mb=0",
        "batch.head_timeout_s=-1",
    ],
)
def test_pool_config_errors(bad):
    with pytest.raises(ConfigError):
        build_engine_config("fast", [bad])


def test_local_cpus_covers_warm_pools():
    cfg = build_engine_config("fast", workers=2)
    assert local_cpus(cfg, available=2) >= cfg.required_cpus()
    assert local_cpus(cfg, available=64) == 64


def test_list_inputs_folder_glob_manifests(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "b.webp", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    images, skipped = list_inputs(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in images] == ["1.jpg", "2.PNG", "b.webp"]
    assert [p.rsplit("/", 1)[1] for p in skipped] == ["notes.txt"]
    assert list_inputs(str(tmp_path / "a" / "*.jpg"))[0] == [str(tmp_path / "a" / "1.jpg")]
    (tmp_path / "m.csv").write_text("path,label\na/1.jpg,x\n/abs/elsewhere.jpg,y\n")
    assert list_inputs(str(tmp_path / "m.csv"))[0] == [str(tmp_path / "a" / "1.jpg"), "/abs/elsewhere.jpg"]
    pq.write_table(pa.table({"uri": ["s3://bucket/k.jpg", "b.webp"]}), tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet"))[0] == ["s3://bucket/k.jpg", str(tmp_path / "b.webp")]
    assert list_inputs(str(tmp_path / "b.webp"))[0] == [str(tmp_path / "b.webp")]


def test_a_manifest_picks_a_face_per_photo(tmp_path):
    from portrait3d.engine.batch import list_input_table

    (tmp_path / "m.csv").write_text("path,face\ng.jpg,1\ng.jpg,\ng.jpg, Central \ng.jpg,widest\n")
    listing, _ = list_input_table(str(tmp_path / "m.csv"))
    assert listing.column("face").to_pylist() == ["1", "", "central", "widest"]
    # A Parquet column of integers (nulls for the run's choice), and a manifest with no face column.
    pq.write_table(pa.table({"uri": ["a.jpg", "b.jpg"], "face": pa.array([2, None], pa.int64())}), tmp_path / "f.pq")
    assert list_input_table(str(tmp_path / "f.pq"))[0].column("face").to_pylist() == ["2", ""]
    (tmp_path / "n.csv").write_text("path\na.jpg\n")
    assert list_input_table(str(tmp_path / "n.csv"))[0].column("face").to_pylist() == [""]


def test_list_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        list_inputs(str(tmp_path / "empty"))
    (tmp_path / "m.csv").write_text("name\nx.jpg\n")
    with pytest.raises(InputError, match="needs a column"):
        list_inputs(str(tmp_path / "m.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read manifest"):
        list_inputs(str(tmp_path / "bad.parquet"))


def test_codec_round_trips_a_real_analysis(astronaut_analysis):
    back = decode(encode(astronaut_analysis), PortraitAnalysis)
    for name in ("crop", "landmarks_3d", "head_mask", "identity", "rotation"):
        assert np.array_equal(getattr(back, name), getattr(astronaut_analysis, name)), name
        assert getattr(back, name).dtype == getattr(astronaut_analysis, name).dtype
    assert back.record() == astronaut_analysis.record()
    assert isinstance(back.crop_box, tuple)


def test_codec_round_trips_a_sculpt_result_with_its_losses():
    from portrait3d.pipelines.mesh import symmetric_sphere
    from portrait3d.pipelines.types import SculptResult

    v, f, mirror = symmetric_sphere(2)
    info = {
        "first": {"step": 0, "loss": 1.5},
        "losses": [{"step": 0, "loss": 1.5}, {"step": 50, "loss": 0.25}],
        "faces": 320,
    }
    result = SculptResult(HeadMesh(v.astype(np.float32), f, mirror, np.zeros(len(v), np.float32)), info)
    back = decode(encode(result), SculptResult)
    assert back.info == info and np.array_equal(back.mesh.faces, f) and back.mesh.vertices.dtype == np.float32


def test_codec_rejects_wrong_or_corrupt_bytes(astronaut_analysis):
    data = encode(astronaut_analysis)
    with pytest.raises(BundleError, match="expected an encoded HeadMesh"):
        decode(data, HeadMesh)
    with pytest.raises(BundleError):
        decode(data[: len(data) // 2], PortraitAnalysis)
    with pytest.raises(BundleError):
        decode(b"\x80\x04K\x01.", PortraitAnalysis)  # a pickle is not loaded


def test_manifest_table_has_one_type_per_column():
    ok, bad = new_row(1, "b.jpg"), new_row(0, "a.jpg")
    ok.update(status="ok", t_analysis_s=0.5)
    mark_error(bad, "analysis", "NoFaceError", "no face")
    t = manifest_table([ok, bad])
    assert t.schema == MANIFEST_SCHEMA
    assert t.column("input_uri").to_pylist() == ["a.jpg", "b.jpg"]
    assert t.column("error_type").to_pylist() == ["NoFaceError", ""]
    assert "work_uri" not in t.column_names


def test_manifest_is_compacted_from_parts_and_remembered_by_stat(tmp_path):
    from portrait3d.engine.manifest import FINGERPRINT_KEY, PartWriter, Previous, compact

    fp = "ab" * 32
    rows = [new_row(i, f"{i}.jpg", size=100 + i, mtime_ns=7) for i in range(4)]
    rows[0].update(status="ok", content_hash="1" * 64)
    mark_error(rows[1], "analysis", "NoFaceError", "no face")
    rows[1]["content_hash"] = "2" * 64
    mark_error(rows[2], "", "WorkerDiedError", "died")  # not a property of the bytes: made again
    rows[2]["content_hash"] = "3" * 64
    mark_error(rows[3], "analysis", "StorageError", "unreadable")  # never read: no hash
    parts = PartWriter(str(tmp_path), fp, every_rows=2)
    for row in (rows[3], rows[1], rows[2], rows[0]):
        parts.add(row)
    assert len(list(Path(parts.uri).glob("*.parquet"))) == 2  # written as they came
    compact(parts, fp, str(tmp_path / "manifest.parquet"))
    table = pq.read_table(tmp_path / "manifest.parquet")
    assert table.column("index").to_pylist() == [0, 1, 2, 3]
    assert table.schema.metadata[FINGERPRINT_KEY] == fp.encode()
    assert table.column("input_size").to_pylist() == [100, 101, 102, 103]
    prev = Previous.load(str(tmp_path), fp)
    assert prev.hashes == {("0.jpg", 100, 7): "1" * 64, ("1.jpg", 101, 7): "2" * 64}
    assert prev.errors == {("2" * 64, ""): ("NoFaceError", "no face", "analysis")}
    # An error of one face of a photo is not the error of its other faces.
    row = new_row(9, "other.jpg", face="") | {"content_hash": "2" * 64}
    assert prev.mark_known_error(row) and row["error_type"] == "NoFaceError"
    row = new_row(9, "other.jpg", face="1") | {"content_hash": "2" * 64}
    assert not prev.mark_known_error(row) and row["status"] == "pending"
    assert Previous.load(str(tmp_path), "cd" * 32).hashes == {}  # other settings: nothing is taken


def test_a_finished_row_reaches_its_part_without_waiting_for_the_next_row(tmp_path):
    """A driver killed while the next head is still being made (minutes on the paper profile) keeps
    every row finished more than ``every_s`` before the kill."""
    from portrait3d.engine.manifest import PartWriter, read_parts

    fp = "ef" * 32
    parts = PartWriter(str(tmp_path), fp, every_s=0.1)
    row = new_row(0, "a.jpg") | {"status": "error", "error_type": "NoFaceError"}
    parts.add(row)
    deadline = time.monotonic() + 30
    while not read_parts(str(tmp_path), fp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["input_uri"] for r in read_parts(str(tmp_path), fp)] == ["a.jpg"]
    with parts.lock:  # the timer thread has finished its write
        assert parts.timer is None and parts.rows == []
    parts.flush()  # nothing pending: no empty part
    assert len(list(Path(parts.uri).glob("*.parquet"))) == 1
