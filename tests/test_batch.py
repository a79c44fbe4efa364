"""``portrait3d batch`` on a local Ray instance: real portraits, broken files, reruns, a killed
worker, S3 in and out (moto on loopback), and the CLI."""

import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from portrait3d.engine.batch import run_batch
from portrait3d.engine.cluster import connect
from portrait3d.engine.config import build_engine_config
from portrait3d.pipelines.config import build_profile_config
from portrait3d.testing import portrait_dataset

from .conftest import QUICK_HEAD, two_astronauts

pytestmark = pytest.mark.slow
POOLS = {"analysis", "geometry", "texture", "export"}


@pytest.fixture(scope="module")
def ray_local(s3_server):
    import ray

    connect(build_engine_config("fast"))
    yield
    ray.shutdown()


def quick(*extra, seed=0):
    return build_profile_config("fast", [*QUICK_HEAD, *extra], seed=seed)


class PoolWatch:
    """Every Ray Data pool worker process that starts while it runs (their titles name the pool's
    class); ones still ending from an earlier run are not counted."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._before = set(self._pool_workers())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pool_workers() -> dict[int, str]:
        import psutil

        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            title = " ".join(p.info["cmdline"] or [])
            if "MapWorker(MapBatches(" in title:
                found[p.info["pid"]] = title
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.update(t for pid, t in self._pool_workers().items() if pid not in self._before)
            self._stop.wait(0.05)

    def __enter__(self) -> "PoolWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_folder_with_broken_files_then_rerun(ray_local, tmp_path):
    inputs = portrait_dataset(tmp_path / "in", portraits=4, broken=2)
    twin = tmp_path / "in" / "twin_of_the_first.png"
    twin.write_bytes(inputs[0].read_bytes())
    blank = tmp_path / "in" / "blank.png"  # an image without a face: a NoFaceError in the analysis pool
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "out"
    seen = []
    s = run_batch(
        str(tmp_path / "in"),
        str(out),
        quick(),
        build_engine_config("fast"),
        on_row=lambda row, p: seen.append((Path(row["input_uri"]).name, p.done, p.failed)),
    )
    assert [d for _, d, _ in seen] == list(range(1, 9))  # progress per row, as rows finish
    assert {n for n, d, _ in seen[:2]} == {"truncated.jpg", "not_an_image.png"}  # counted before any head
    rows = {Path(r["input_uri"]).name: r for r in pq.read_table(s.manifest_uri).to_pylist()}
    assert len(rows) == 8 and (s.progress.ok, s.progress.failed) == (5, 3)
    assert (rows["blank.png"]["error_type"], rows["blank.png"]["error_stage"]) == ("NoFaceError", "analysis")
    assert (s.progress.made, s.progress.reused) == (4, 1)
    assert rows["truncated.jpg"]["error_type"] == "TruncatedImageError"
    assert rows["not_an_image.png"]["error_type"] == "NotAnImageError"
    assert {rows[n]["error_stage"] for n in ("truncated.jpg", "not_an_image.png")} == {"analysis"}
    for p in inputs[:4]:
        r = rows[p.name]
        assert r["status"] == "ok" and not r["reused"], r
        assert r["content_hash"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert Path(r["glb_uri"]).read_bytes()[:4] == b"glTF"
        assert json.loads(Path(r["json_uri"]).read_text())["input_sha256"] == r["content_hash"]
        assert Path(r["views_uri"]).stat().st_size > 1000
        assert all(not math.isnan(r[f"t_{s}_s"]) for s in ("analysis", "init", "sculpt", "texture", "export"))
        assert set(json.loads(r["workers_json"])) == POOLS
        assert json.loads(r["metrics_json"])["mesh"]["watertight"]
    # the same bytes twice: one head, both rows point at it
    first, second = rows[inputs[0].name], rows[twin.name]
    assert second["status"] == "ok" and second["reused"] and second["glb_uri"] == first["glb_uri"]
    assert len(list(out.glob("heads/*"))) == 4
    assert not (out / "_work").exists()

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("heads/*/*")}
    with PoolWatch() as watch:
        s2 = run_batch(str(tmp_path / "in"), str(out), quick(), build_engine_config("fast"))
    assert watch.seen == set(), "a rerun with nothing to make started a worker pool"
    rows2 = {Path(r["input_uri"]).name: r for r in pq.read_table(s2.manifest_uri).to_pylist()}
    assert (s2.progress.reused, s2.progress.made, s2.progress.failed) == (5, 0, 3)
    assert rows2["blank.png"]["error_type"] == "NoFaceError"  # from the manifest, not from a pool again
    assert all(rows2[p.name]["reused"] and rows2[p.name]["glb_uri"] == rows[p.name]["glb_uri"] for p in inputs[:4])
    assert all(json.loads(rows2[p.name]["workers_json"]) == {} for p in inputs[:4])
    assert {p: p.stat().st_mtime_ns for p in out.glob("heads/*/*")} == mtimes  # nothing rewritten


def test_a_manifest_row_picks_the_face_of_a_group_photo(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(two_astronauts()).save(tmp_path / "in" / "two.png")
    manifest = tmp_path / "in" / "faces.csv"
    manifest.write_text("path,face\ntwo.png,\ntwo.png,0\ntwo.png,1\ntwo.png,1\ntwo.png,2\ntwo.png,widest\n")
    out = tmp_path / "out"
    s = run_batch(str(manifest), str(out), quick(), build_engine_config("fast"))
    rows = pq.read_table(s.manifest_uri).to_pylist()
    assert [r["face"] for r in rows] == ["", "0", "1", "1", "2", "widest"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] * 2
    assert (s.progress.made, s.progress.reused) == (3, 1)  # the second "1" is the first one's head
    assert rows[4]["error_type"] == "NoFaceError" and "has 2 face(s)" in rows[4]["error_message"]
    assert rows[5]["error_type"] == "ConfigError" and "widest" in rows[5]["error_message"]
    heads = [json.loads(Path(r["json_uri"]).read_text()) for r in rows[:4]]
    assert len({r["bundle_uri"] for r in rows[:3]}) == 3 and rows[3]["bundle_uri"] == rows[2]["bundle_uri"]
    # The run's choice is the clearest face: face 1, the small one on the right, which dlib's frontal
    # detector scores higher than face 0, the big one on the left.
    assert heads[0]["crop_box"] == heads[2]["crop_box"] and heads[1]["crop_box"][2] < 700
    assert heads[2]["crop_box"][0] > 512
    assert "2 faces found; used face 1 from the left (from 0)" in heads[2]["notes"]
    assert all(h["input_sha256"] == rows[0]["content_hash"] for h in heads)

    with PoolWatch() as watch:  # a rerun takes every head, and face 2's error, from the first run
        s2 = run_batch(str(manifest), str(out), quick(), build_engine_config("fast"))
    assert watch.seen == set(), "a rerun with nothing to make started a worker pool"
    rows2 = pq.read_table(s2.manifest_uri).to_pylist()
    assert [r["status"] for r in rows2] == [r["status"] for r in rows] and s2.progress.reused == 4
    assert [r["glb_uri"] for r in rows2] == [r["glb_uri"] for r in rows]


def test_rerun_trusts_listed_size_and_mtime_unless_told_not_to(ray_local, tmp_path):
    """A rerun takes an input listed with the URI, size and mtime the last run recorded to have the
    same bytes (it is not read again); a new mtime, or ``batch.reuse_by_stat=false``, reads it."""
    jpeg = portrait_dataset(tmp_path / "src", portraits=1, broken=0)[0].read_bytes()
    src = tmp_path / "in"
    src.mkdir()
    for name, cut in (("same_stat.jpg", 3000), ("touched.jpg", 3100)):
        (src / name).write_bytes(jpeg[:cut])  # truncated JPEGs: input errors, no head to make
    out = tmp_path / "out"
    first = {
        Path(r["input_uri"]).name: r for r in run_batch(str(src), str(out), quick(), build_engine_config("fast")).rows
    }
    assert {r["error_type"] for r in first.values()} == {"TruncatedImageError"}
    for name in first:  # new bytes of the same size
        p = src / name
        st = p.stat()
        p.write_bytes(bytes(255 - b for b in p.read_bytes()))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns if name == "same_stat.jpg" else st.st_mtime_ns + 10**9))
    assert first["same_stat.jpg"]["input_size"] == 3000
    assert first["same_stat.jpg"]["input_mtime_ns"] == (src / "same_stat.jpg").stat().st_mtime_ns

    again = {
        Path(r["input_uri"]).name: r for r in run_batch(str(src), str(out), quick(), build_engine_config("fast")).rows
    }
    assert again["same_stat.jpg"]["content_hash"] == first["same_stat.jpg"]["content_hash"]  # not read
    assert again["same_stat.jpg"]["error_type"] == "TruncatedImageError"
    touched = hashlib.sha256((src / "touched.jpg").read_bytes()).hexdigest()
    assert again["touched.jpg"]["content_hash"] == touched != first["touched.jpg"]["content_hash"]
    assert again["touched.jpg"]["error_type"] == "NotAnImageError"  # read again: its new bytes are no JPEG

    engine = build_engine_config("fast", ["batch.reuse_by_stat=false"])
    strict = {Path(r["input_uri"]).name: r for r in run_batch(str(src), str(out), quick(), engine).rows}
    assert strict["same_stat.jpg"]["content_hash"] == hashlib.sha256((src / "same_stat.jpg").read_bytes()).hexdigest()


def _kill_first(title: str, killed: list, stop: threading.Event) -> None:
    import psutil

    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or []).strip()  # Ray pads process titles
            if title in cmd and cmd.endswith(".submit"):  # the worker is inside a head
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
        time.sleep(0.02)


def test_killed_worker_head_is_retried(ray_local, tmp_path):
    portrait_dataset(tmp_path / "in", portraits=2, broken=0)
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_first, args=("MapBatches(GeometryWorker)", killed, stop), daemon=True)
    watcher.start()
    try:
        s = run_batch(
            str(tmp_path / "in"), str(tmp_path / "out"), quick("sculpt.steps=150"), build_engine_config("fast")
        )
    finally:
        stop.set()
    assert len(killed) == 1, "the geometry worker was never caught inside a head"
    assert [r["status"] for r in s.rows] == ["ok", "ok"], [r["error_message"] for r in s.rows]
    geometry_pids = {json.loads(r["workers_json"])["geometry"]["pid"] for r in s.rows}
    assert killed[0] not in geometry_pids  # the restarted worker finished the head


def test_head_that_kills_its_worker_every_time_is_an_error_row(ray_local, tmp_path):
    portrait_dataset(tmp_path / "in", portraits=2, broken=0)
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_first, args=("MapBatches(TextureWorker)", killed, stop), daemon=True)
    watcher.start()
    try:  # no retries: the one death is the head's last attempt
        s = run_batch(
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            quick("texture.texture_size=1024"),
            build_engine_config("fast", ["batch.max_task_retries=0"]),
        )
    finally:
        stop.set()
    assert len(killed) == 1
    assert sorted(r["status"] for r in s.rows) == ["error", "ok"]  # the run went on with the other head
    (dead,) = [r for r in s.rows if r["status"] == "error"]
    assert dead["error_type"] == "WorkerDiedError" and "1 attempt(s)" in dead["error_message"]
    table = pq.read_table(s.manifest_uri)
    assert table.num_rows == 2 and sorted(table.column("status").to_pylist()) == ["error", "ok"]


@pytest.mark.parametrize("grace, retries", [(10, 0), (0, 2), (0, 0)])
def test_head_past_its_time_limit_is_an_error_row(ray_local, tmp_path, grace, retries):
    """grace > 0: the stage is cancelled and stops at its next check (the worker and its models stay);
    grace 0: the worker process is ended at once, and the retry (or the driver) writes the row."""
    portrait_dataset(tmp_path / "in", portraits=2 if grace else 1, broken=1)
    out = tmp_path / "out"
    # 100k sculpt steps take many minutes; the limit stops the geometry pool's work after 4 s
    s = run_batch(
        str(tmp_path / "in"),
        str(out),
        quick("sculpt.steps=100000"),
        build_engine_config(
            "fast",
            ["batch.head_timeout_s=4", f"batch.head_timeout_grace_s={grace}", f"batch.max_task_retries={retries}"],
        ),
    )
    *slow, broken = s.rows
    for row in slow:
        assert row["status"] == "error" and row["error_type"] == "HeadTimeoutError", row
        assert row["error_stage"] == "geometry" and "batch.head_timeout_s" in row["error_message"]
    geometry = [json.loads(r["workers_json"]).get("geometry") for r in slow]
    if grace:  # cancelled in the stage: the same warm worker writes both rows
        assert geometry[0]["pid"] == geometry[1]["pid"]
    else:  # with a retry left, a restarted worker writes the row (without running the head again); else the driver
        assert all((g is not None) == (retries > 0) for g in geometry)
    assert broken["error_type"] == "TruncatedImageError"  # the run went on with the other input
    want = ["HeadTimeoutError"] * len(slow) + ["TruncatedImageError"]
    assert pq.read_table(s.manifest_uri).column("error_type").to_pylist() == want
    assert not (out / "_work").exists()


def test_s3_input_and_output(ray_local, tmp_path, s3_bucket):
    s3 = boto3.client("s3")
    for p in portrait_dataset(tmp_path / "in", portraits=1, broken=1):
        s3.upload_file(str(p), s3_bucket, f"portraits/{p.name}")
    out = f"s3://{s3_bucket}/heads"
    s = run_batch(f"s3://{s3_bucket}/portraits/", out, quick(), build_engine_config("fast"))
    assert s.manifest_uri == f"{out}/manifest.parquet"
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=s3_bucket, Key="heads/manifest.parquet")["Body"].read()))
    rows = {r["input_uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert rows["astronaut.png"]["status"] == "ok" and rows["truncated.jpg"]["status"] == "error"
    key = rows["astronaut.png"]["glb_uri"][len(f"s3://{s3_bucket}/") :]
    assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()[:4] == b"glTF"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="heads/")["Contents"]}
    assert not any("/_work/" in k for k in keys)
    again = run_batch(f"s3://{s3_bucket}/portraits/", out, quick(), build_engine_config("fast"))
    assert again.progress.reused == 1
    other_seed = run_batch(f"s3://{s3_bucket}/portraits/", out, quick(seed=1), build_engine_config("fast"))
    assert (other_seed.progress.reused, other_seed.progress.made) == (0, 1)  # new settings: made again
    # The head from the Ray pools is the bytes of the head made in one process.
    from portrait3d.pipelines.pipeline import Portrait3D

    (row,) = [r for r in other_seed.rows if r["status"] == "ok"]
    glb = s3.get_object(Bucket=s3_bucket, Key=row["glb_uri"][len(f"s3://{s3_bucket}/") :])["Body"].read()
    with Portrait3D(quick(seed=1)) as p3d:
        assert p3d.run(tmp_path / "in" / "astronaut.png").bundle.files["head.glb"] == glb


def test_killed_driver_loses_no_finished_row(ray_local, tmp_path):
    """`portrait3d batch` joins this Ray instance and its driver is killed (SIGKILL) once a head and
    an analysis error are on disk; the rerun's manifest has every row, no head made before the kill
    is made again, and the error comes from the killed run's parts, not from a pool."""
    import ray

    from portrait3d.engine.manifest import read_parts

    portrait_dataset(tmp_path / "in", portraits=3, broken=2)
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(tmp_path / "in" / "blank.png")  # NoFaceError
    out = tmp_path / "out"
    config = quick()
    cmd = [sys.executable, "-m", "portrait3d.cli", "batch", str(tmp_path / "in"), str(out), "-q", "-w", "1"]
    cmd += [a for c in QUICK_HEAD for a in ("-c", c)] + ["--address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    before = []
    while time.monotonic() < deadline and proc.poll() is None:
        before = read_parts(str(out), config.fingerprint())
        kinds = {r["status"] if r["status"] == "ok" else r["error_type"] for r in before}
        if {"ok", "NoFaceError"} <= kinds:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.kill()
    proc.wait()
    done_before = {r["input_uri"] for r in before if r["status"] == "ok"}
    assert done_before and not (out / "manifest.parquet").exists()
    complete = [d for d in out.glob("heads/*") if (d / "head.json").exists()]
    mtimes = {p: p.stat().st_mtime_ns for d in complete for p in d.iterdir()}

    # The rerun through the CLI, as a person reruns it: exit 1 (some inputs failed), the summary on
    # stderr, the manifest's URI on stdout.
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr
    summary = re.search(r"3 ok \((\d) reused, (\d) made\), 3 failed", rerun.stderr)
    assert summary, rerun.stderr
    reused, made = map(int, summary.groups())
    assert reused + made == 3 and reused >= len(done_before)  # a head may finish between the read and the kill
    assert rerun.stdout == f"{out / 'manifest.parquet'}\n"  # one unwrapped line, however long the path
    rows = {r["input_uri"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert len(rows) == 6
    for r in before:  # every row finished before the kill, with the same result
        assert (rows[r["input_uri"]]["status"], rows[r["input_uri"]]["error_type"]) == (r["status"], r["error_type"])
    assert all(rows[u]["reused"] for u in done_before)
    for p, t in mtimes.items():  # no head made before the kill is made again
        assert p.stat().st_mtime_ns == t, p
    blank = rows[str(tmp_path / "in" / "blank.png")]
    assert blank["error_type"] == "NoFaceError" and json.loads(blank["workers_json"]) == {}
    assert not list(out.glob("_manifest/*/*"))  # a completed run compacts its parts away


def test_cli_batch_refuses_a_missing_input_before_any_work(tmp_path):
    cmd = [sys.executable, "-m", "portrait3d.cli", "batch", str(tmp_path / "nothing-here"), str(tmp_path / "out")]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert bad.returncode == 2 and "InputError" in bad.stderr
    assert not (tmp_path / "out").exists()
