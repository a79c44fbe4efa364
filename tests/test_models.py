"""Model roots (manifest, check, verified loading, pickle policy) and ISD on tiny random models of the
real classes, loaded through the real loading code."""

import json
import shutil

import numpy as np
import pytest
import torch

from portrait3d.errors import ModelError
from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.models import ModelRoot, check_root, index_root


@pytest.fixture
def root_copy(tiny_root, tmp_path):
    return shutil.copytree(tiny_root, tmp_path / "root")


def _states(root):
    return {s.role: s for s in check_root(str(root))}


def test_check_lists_every_role(tiny_root):
    states = _states(tiny_root)
    required = [
        "geometry_normal",
        "geometry_depth",
        "texture_base",
        "vae",
        "controlnet_landmarks",
        "controlnet_canny",
        "controlnet_normal",
        "ip_adapter_faceid",
        "arcface",
    ]
    assert all(states[r].state == "present" and states[r].bytes > 0 for r in required)
    assert states["caption"].state == "present" and states["gan3d"].state == "absent"


def test_missing_and_corrupt_roles_are_named(root_copy):
    shutil.rmtree(root_copy / "controlnet_canny")
    weights = next((root_copy / "vae").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    states = _states(root_copy)
    assert states["controlnet_canny"].state == "missing"
    assert states["vae"].state == "corrupt" and "SHA-256" in states["vae"].problems[0]
    assert states["texture_base"].state == "present"
    root = ModelRoot(str(root_copy), cache=root_copy / "cache")
    with pytest.raises(ModelError, match="vae.*corrupt"):
        root.folder("vae")
    with pytest.raises(ModelError, match="controlnet_canny"):
        root.folder("controlnet_canny")
    manifest = json.loads((root_copy / "manifest.json").read_text())
    del manifest["roles"]["arcface"]
    (root_copy / "manifest.json").write_text(json.dumps(manifest))
    assert _states(root_copy)["arcface"].state == "missing"
    with pytest.raises(ModelError, match="no arcface role"):
        ModelRoot(str(root_copy)).folder("arcface")


def test_no_manifest_or_a_bad_one(tmp_path):
    with pytest.raises(ModelError, match="manifest.json"):
        check_root(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ModelError, match="portrait3d.models/1"):
        check_root(str(tmp_path))


class _Code:
    """Anything that is not a tensor: unpickling it would import and run code."""


def test_pickle_with_code_is_refused_unless_allowed_by_name(root_copy):
    path = next((root_copy / "ip_adapter_faceid").glob("*.bin"))
    sd = torch.load(path, weights_only=True)
    sd["extra"] = _Code()
    torch.save(sd, path)
    index_root(root_copy)
    with pytest.raises(ModelError, match="--allow-pickle ip_adapter_faceid"):
        ModelRoot(str(root_copy), cache=root_copy / "cache").folder("ip_adapter_faceid")
    allowed = ModelRoot(str(root_copy), allow_pickle=["ip_adapter_faceid"], cache=root_copy / "cache")
    assert isinstance(
        allowed.load_weights("ip_adapter_faceid", allowed.file("ip_adapter_faceid", (".bin",)))["extra"], _Code
    )
    with pytest.raises(ModelError, match="unknown model role"):
        ModelRoot(str(root_copy), allow_pickle=["everything"])


def test_s3_root_is_cached_and_verified(tiny_root, s3_bucket, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    for p in tiny_root.rglob("*"):
        rel = p.relative_to(tiny_root)
        if p.is_file() and (rel.parts[0] == "vae" or rel.name == "manifest.json"):
            s3.upload_file(str(p), s3_bucket, f"models/{rel.as_posix()}")
    root = ModelRoot(f"s3://{s3_bucket}/models", cache=tmp_path / "cache")
    folder = root.folder("vae")
    assert folder.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (tiny_root / "vae").iterdir())
    with pytest.raises(ModelError, match="controlnet_canny"):
        root.folder("controlnet_canny")


@pytest.fixture(scope="module")
def isd(tiny_root):
    from portrait3d.pipelines.guidance import IDGuidance, ISDSettings
    from portrait3d.pipelines.models.diffusion import load_controlnet_pipeline

    pipe = load_controlnet_pipeline(ModelRoot(str(tiny_root)), "geometry_normal", ("controlnet_landmarks",))
    return IDGuidance(pipe, ISDSettings())


def test_isd_gradient_is_finite_and_reaches_the_render_and_the_identity_matters(isd, astronaut_analysis):
    a = astronaut_analysis
    cams = [Camera.orbit(0, 0, 1.0, 28, 64), Camera.orbit(120, 10, 1.0, 28, 64)]
    ident = np.random.default_rng(0).normal(size=512).astype(np.float32)
    cond = isd.condition("a photo of a face, normal map", ident, a.landmarks_3d, cams)
    assert cond.text.shape[0] == cond.id_embeds.shape[0] == cond.control.shape[0] == 4
    params = torch.zeros(2, 3, 64, 64, requires_grad=True)
    loss, info = isd(torch.sigmoid(params), cond, 0, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0
    assert all(20 <= t < 500 for t in info["t"].tolist())
    # The ID adapter is wired in: another face embedding predicts other noise.
    z_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300, 300])
    other = isd.condition("a photo of a face, normal map", -ident, a.landmarks_3d, cams)
    assert not torch.allclose(isd.predict_noise(z_t, t, cond, 5.0), isd.predict_noise(z_t, t, other, 5.0))


def test_landmark_image_follows_the_camera(astronaut_analysis):
    from portrait3d.pipelines.landmark_image import landmark_image

    lm = astronaut_analysis.landmarks_3d
    front, side = (landmark_image(lm, Camera.orbit(y, 0, 0.6, 28, 256)) for y in (0, 50))
    assert not np.array_equal(front, side)  # (colours and the back view: test_conventions)
    # Lines pass through the projected landmarks: nose tip and both mouth corners are drawn on.
    cam = Camera.orbit(0, 0, 0.6, 28, 256)
    uv, _ = cam.project(lm)
    for i in (61, 291, 10, 152):  # mouth corners, forehead and chin on the oval
        x, y = (int(v) for v in uv[i])
        assert front[y - 2 : y + 3, x - 2 : x + 3].any(), i


def test_models_check_command(root_copy):
    from typer.testing import CliRunner

    from portrait3d.cli import app

    ok = CliRunner().invoke(app, ["models", "check", str(root_copy)])
    assert ok.exit_code == 0, ok.output
    shutil.rmtree(root_copy / "controlnet_normal")
    bad = CliRunner().invoke(app, ["models", "check", str(root_copy), "--fast"])
    assert bad.exit_code == 1 and "controlnet_normal" in bad.output
    assert CliRunner().invoke(app, ["models", "check", str(root_copy / "nowhere")]).exit_code == 2
