"""The main job on a real portrait: CLI generate -> bundle -> eval, determinism, and bad input."""

import hashlib
import json
import struct
import zlib

import numpy as np
import pygltflib
import pytest
from PIL import Image
from typer.testing import CliRunner

from portrait3d.cli import app
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.evaluate import evaluate
from portrait3d.pipelines.export import level_with_camera
from portrait3d.pipelines.pipeline import Portrait3D
from portrait3d.pipelines.types import HeadMesh, TexturedHead

from .conftest import QUICK_HEAD, astronaut, png_bytes

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, astronaut_png):
    out = tmp_path_factory.mktemp("bundle") / "astronaut"
    res = runner.invoke(app, ["generate", str(astronaut_png), "-o", str(out), "--seed", "3", "-q"])
    assert res.exit_code == 0, res.output
    return out


def test_bundle_files_and_gltf(bundle):
    assert sorted(p.name for p in bundle.iterdir()) == ["head.glb", "head.json", "views.png"]
    g = pygltflib.GLTF2().load(str(bundle / "head.glb"))
    assert g.asset.version == "2.0"
    assert len(g.meshes) == 1 and len(g.images) == 1 and len(g.textures) == 1
    mat = g.materials[g.meshes[0].primitives[0].material]
    assert mat.pbrMetallicRoughness.baseColorTexture is not None
    assert g.images[0].bufferView is not None  # embedded, not a URI
    pos = g.accessors[g.meshes[0].primitives[0].attributes.POSITION]
    lo, hi = np.array(pos.min), np.array(pos.max)
    assert np.all(np.abs((lo + hi) / 2) < 0.08)  # centred on the head
    assert 0.18 < hi[1] - lo[1] < 0.5  # metres, +Y up: a head with a neck
    rec = json.loads((bundle / "head.json").read_text())
    for key in (
        "input_sha256",
        "crop_box",
        "reference_camera",
        "landmarks_3d",
        "pose_deg",
        "profile",
        "versions",
        "timings_s",
        "metrics",
        "config",
    ):
        assert key in rec, key
    assert rec["profile"] == "fast" and rec["config"]["seed"] == 3
    assert set(rec["timings_s"]) == {"analysis", "init", "sculpt", "texture", "export"}
    tex = rec["metrics"]["texture"]
    assert tex["coverage"] == pytest.approx(tex["from_photo"] + tex["from_mirror"] + tex["from_views"])
    lm = np.array(rec["landmarks_3d"])
    assert lm[1, 2] > 0.05  # the nose points toward +Z
    # Levelled to the photo camera by default: the astronaut was photographed about 8 deg above the face.
    assert 5 < rec["axes"]["levelled_deg"] < 11
    assert rec["metrics"]["mesh"]["watertight"] and rec["metrics"]["mesh"]["degenerate_faces"] == 0
    assert Image.open(bundle / "views.png").size == (1024, 512)


@pytest.mark.parametrize("cap", [0.0, 3.0, 30.0])
def test_levelling_turns_the_head_rigidly_and_keeps_the_reference_view(astronaut_analysis, cap):
    a = astronaut_analysis
    verts = a.landmarks_3d.astype(np.float32)
    mesh = HeadMesh(verts, np.zeros((0, 3), np.int64), np.arange(len(verts)), np.ones(len(verts), np.float32))
    head = TexturedHead(mesh, np.zeros((0, 2)), np.zeros((0, 3), np.int64), np.zeros(0, np.int64), np.zeros((1, 1, 3)))
    before = np.degrees(np.arctan2(a.camera.center[1], np.hypot(a.camera.center[0], a.camera.center[2])))
    assert before > 5  # the astronaut's portrait is taken from above her face's frame
    b, turned, angle = level_with_camera(a, head, cap)
    assert angle == pytest.approx(min(before, cap), abs=1e-9)
    after = np.degrees(np.arctan2(b.camera.center[1], np.hypot(b.camera.center[0], b.camera.center[2])))
    assert after == pytest.approx(before - min(before, cap), abs=1e-9)
    np.testing.assert_allclose(b.camera.project(b.landmarks_3d)[0], a.camera.project(a.landmarks_3d)[0], atol=1e-6)
    np.testing.assert_allclose(turned.mesh.vertices, b.landmarks_3d, atol=1e-6)
    np.testing.assert_allclose(b.rotation @ b.landmarks_3d.T, a.rotation @ a.landmarks_3d.T, atol=1e-12)
    assert a.camera.center[1] > 0.1 and np.allclose(a.landmarks_3d, astronaut_analysis.landmarks_3d)  # not mutated


@pytest.fixture(scope="module")
def scores(bundle, astronaut_png):
    return evaluate(bundle, astronaut_png)


def test_eval_meets_targets_on_astronaut(scores):
    failed = {k: c for k, c in scores["checks"].items() if not c["pass"] and k != "texture_coverage"}
    assert not failed, failed
    assert scores["same_input"] and scores["masked_psnr_db"] > 20
    assert all(len(scores["views"][y]["mediapipe_faces_around"]) == 3 for y in ("60", "-60"))


@pytest.mark.parametrize(
    "around, passes", [([1, 1, 1], True), ([1, 0, 1], True), ([0, 0, 1], False), ([0, 1, 0], False)]
)
def test_a_side_passes_when_most_views_around_60_degrees_show_a_face(around, passes):
    """One view alone can miss a face its neighbours 5 degrees away find (measured on the astronaut's head at
    -60: none, with 0.66 at -55 and 0.61 at -65); two of the three must find it."""
    from portrait3d.pipelines.evaluate import _checks

    side = {"mediapipe_faces": around[1], "mediapipe_faces_around": around, "identity_distance": 0.4}
    views = {y: {"mediapipe_faces": 1, "identity_distance": 0.3} for y in ("0", "30", "-30")}
    views |= {
        "60": side,
        "-60": dict(side, mediapipe_faces_around=[1, 1, 1]),
        "180": {"mediapipe_faces": 0, "dlib_hog_faces": 0},
    }
    m = {
        "views": views,
        "silhouette_iou": 0.97,
        "texture_coverage": 1.0,
        "mesh": {"watertight": True, "degenerate_faces": 0},
    }
    checks = _checks(m)
    assert checks["face_found_yaw_60"]["pass"] is passes and checks["face_found_yaw_-60"]["pass"]
    assert checks["face_found_yaw_60"]["value"] == sum(n > 0 for n in around)


@pytest.mark.xfail(
    strict=True,
    reason="no view of the trajectory sees the neck's bottom cut: 2.3% of the used texels "
    "get colour only from the atlas fill (issue 15)",
)
def test_texture_coverage_target(scores, bundle):
    rec = json.loads((bundle / "head.json").read_text())
    assert scores["texture_coverage"] == rec["metrics"]["texture"]["coverage"]
    assert scores["checks"]["texture_coverage"]["pass"]


def test_eval_cli(bundle, astronaut_png, scores):
    res = runner.invoke(app, ["eval", str(bundle), "--image", str(astronaut_png), "--json"])
    assert res.exit_code == (0 if scores["passed"] else 1), res.output
    m = json.loads(res.stdout)
    assert m["passed"] is scores["passed"] and m["checks"] == scores["checks"]


def test_same_seed_same_glb(bundle, astronaut_png):
    with Portrait3D(build_profile_config("fast", seed=3)) as p3d:
        files = p3d.run(astronaut_png).bundle.files
    digest = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731 (pytest's byte diff of two glbs takes minutes)
    assert digest(files["head.glb"]) == digest((bundle / "head.glb").read_bytes())


def _bomb() -> bytes:
    png = png_bytes(np.zeros((1, 1, 3), np.uint8))
    i = png.index(b"IHDR")
    data = struct.pack(">II", 9000, 9000) + png[i + 12 : i + 17]
    return png[: i + 4] + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[i + 21 :]


BAD_INPUTS = {
    "not_an_image": (b"hello, I am a text file", "NotAnImageError"),
    "truncated": (None, "TruncatedImageError"),
    "bomb": (_bomb(), "ImageTooLargeError"),
    "no_face": (png_bytes(np.full((256, 256, 3), 90, np.uint8)), "NoFaceError"),
    "small_face": (png_bytes(np.asarray(Image.fromarray(astronaut()).resize((128, 128)))), "FaceTooSmallError"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_typed_error_and_writes_nothing(case, tmp_path):
    data, kind = BAD_INPUTS[case]
    if data is None:
        full = png_bytes(astronaut())
        data = full[: len(full) // 3]
    src = tmp_path / f"{case}.png"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["generate", str(src), "-o", str(out), "-q"])
    assert res.exit_code == 2, res.output
    assert kind in res.output
    assert list(out.iterdir()) == []


def test_missing_path_and_output_is_a_file(tmp_path, astronaut_png):
    res = runner.invoke(app, ["generate", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2 and "ImageReadError" in res.output
    assert not (tmp_path / "o").exists()
    f = tmp_path / "file.txt"
    f.write_text("x")
    res = runner.invoke(app, ["generate", str(astronaut_png), "-o", str(f), "-q"])
    assert res.exit_code == 2 and "OutputPathError" in res.output
    assert f.read_text() == "x"
    res = runner.invoke(app, ["generate", str(astronaut_png), "-o", str(tmp_path / "o2"), "-c", "sculpt.bogus=1"])
    assert res.exit_code == 2 and "ConfigError" in res.output


def test_info_lists_profiles():
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert "profile fast" in res.output and "can run here" in res.output and "sculpt.steps" in res.output


def test_info_tells_truthfully_whether_each_profile_can_run(tiny_root):
    import torch

    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    lines = {ln.split(":")[0]: ln for ln in res.output.splitlines() if ln.startswith("profile ")}
    assert "can run here" in lines["profile fast"] and "cannot" not in lines["profile fast"]
    assert "cannot run here" in lines["profile tiny"] and "no model root" in lines["profile tiny"]
    assert "cannot run here" in lines["profile paper"] and "no model root" in lines["profile paper"]
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in lines["profile paper"]
    res = runner.invoke(app, ["info", "--models", str(tiny_root)])
    lines = {ln.split(":")[0]: ln for ln in res.output.splitlines() if ln.startswith("profile ")}
    assert "cannot" not in lines["profile tiny"]
    assert ("cannot" in lines["profile paper"]) == (not torch.cuda.is_available())


_LOADED = """
import runpy, sys
sys.argv = ["portrait3d", *sys.argv[1:]]
try:
    runpy.run_module("portrait3d.cli", run_name="__main__")
except SystemExit as e:
    heavy = sorted(m for m in sys.modules if m in ("torch", "mediapipe", "cv2", "trimesh", "dlib"))
    print("EXIT", e.code, "LOADED", ",".join(heavy))
"""


@pytest.mark.parametrize("case", ["not_an_image", "bomb", "missing"])
def test_bad_input_fails_before_any_model_or_heavy_library_loads(case, tmp_path):
    import subprocess
    import sys

    src = tmp_path / "photo.png"
    if case != "missing":
        src.write_bytes(BAD_INPUTS[case][0])
    r = subprocess.run(
        [sys.executable, "-c", _LOADED, "generate", str(src), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    want = {"not_an_image": "NotAnImageError", "bomb": "ImageTooLargeError", "missing": "ImageReadError"}[case]
    assert want in r.stderr and "EXIT 2 LOADED \n" in r.stdout + "\n", (r.stdout, r.stderr)
    assert not (tmp_path / "out").exists()


NATIVE_LINES = ("TensorFlow Lite", "absl", "W0000", "I0000", "inference_feedback_manager", "pkg_resources")


def test_generate_prints_no_native_log_lines_unless_verbose(tmp_path, astronaut_png):
    import subprocess
    import sys

    quick = [a for c in QUICK_HEAD for a in ("-c", c)]
    cmd = [sys.executable, "-m", "portrait3d.cli", "generate"]
    ok = subprocess.run(
        [*cmd, str(astronaut_png), "-o", str(tmp_path / "a"), "-q", *quick], capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    assert "done in" in ok.stderr and not [s for s in NATIVE_LINES if s in ok.stderr], ok.stderr
    noface = tmp_path / "noface.png"
    noface.write_bytes(BAD_INPUTS["no_face"][0])
    bad = subprocess.run(
        [*cmd, str(noface), "-o", str(tmp_path / "b"), "-q"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error (NoFaceError): no face found in"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1  # the message alone, on one line
    loud = subprocess.run(
        [*cmd, str(noface), "-o", str(tmp_path / "c"), "-q", "--verbose"], capture_output=True, text=True, timeout=300
    )
    assert loud.returncode == 2 and [s for s in NATIVE_LINES if s in loud.stderr], loud.stderr
