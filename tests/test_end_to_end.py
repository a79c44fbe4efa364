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
from portrait3d.pipelines.pipeline import Portrait3D

from .conftest import astronaut, png_bytes

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
    lm = np.array(rec["landmarks_3d"])
    assert lm[1, 2] > 0.05  # the nose points toward +Z
    assert rec["metrics"]["mesh"]["watertight"] and rec["metrics"]["mesh"]["degenerate_faces"] == 0
    assert Image.open(bundle / "views.png").size == (1024, 512)


def test_eval_meets_targets_on_astronaut(bundle, astronaut_png):
    m = evaluate(bundle, astronaut_png)
    failed = {k: c for k, c in m["checks"].items() if not c["pass"]}
    assert not failed, failed
    assert m["same_input"] and m["masked_psnr_db"] > 20


def test_eval_cli(bundle, astronaut_png):
    res = runner.invoke(app, ["eval", str(bundle), "--image", str(astronaut_png), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True


def test_same_seed_same_glb(bundle, astronaut_png):
    p3d = Portrait3D(build_profile_config("fast", seed=3))
    files = p3d.bundle(p3d.run(astronaut_png))
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
    "small_face": (png_bytes(np.asarray(Image.fromarray(astronaut()).resize((240, 240)))), "FaceTooSmallError"),
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
