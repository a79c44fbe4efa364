"""The paper profile's fast paths (issue 17): a compiled denoiser gives the eager ISD gradient;
K-batched ISD gives each head the gradient a call of its own would give; the geometry pool's K-head
step (``sculpt_many``) makes the heads the one-head step makes."""

import dataclasses

import numpy as np
import pytest
import torch

from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.guidance import Condition


@pytest.fixture(scope="module")
def sculpt(tiny_sculpt):
    return tiny_sculpt


def _identity(seed):
    e = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return e / np.linalg.norm(e)


def test_k_batched_isd_gradients_equal_single_calls(sculpt, astronaut_analysis):
    isd, lm = sculpt.isd, astronaut_analysis.landmarks_3d
    cams = [Camera.orbit(20, 5, 0.6, 30, 64), Camera.orbit(150, 20, 0.7, 35, 64), Camera.orbit(-60, -10, 0.6, 28, 64)]
    idents = [_identity(s) for s in range(3)]
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    conds = [isd.condition("a head", i, lm, [c]) for i, c in zip(idents, cams, strict=True)]
    single = []
    for k in range(3):
        img = images[k : k + 1].clone().requires_grad_(True)
        loss, info = isd(img, conds[k], 1000, torch.Generator().manual_seed(100 + k))
        loss.backward()
        single.append((img.grad, info["t"][0], loss.detach()))
    batch = images.clone().requires_grad_(True)
    _, info = isd(batch, Condition.stack(conds), 1000, [torch.Generator().manual_seed(100 + k) for k in range(3)])
    info["losses"].sum().backward()
    for k, (grad, t, loss) in enumerate(single):
        assert info["t"][k] == t
        assert torch.allclose(info["losses"][k], loss, rtol=1e-4)
        err = (batch.grad[k : k + 1] - grad).norm() / grad.norm()  # the batched convolutions sum in another order
        assert err < 1e-4, (k, float(err))


def test_compiled_isd_gradient_equals_eager(sculpt, astronaut_analysis):
    """The denoiser through torch.compile's graph capture (dynamo + AOT autograd; inductor's code
    generation takes minutes on these CPUs, so it is traced with aot_eager) gives eager's gradient,
    with and without the identity (two graphs: the ID adapter's scale is a guarded attribute)."""
    from portrait3d.pipelines.acceleration import compile_denoiser

    isd, lm = sculpt.isd, astronaut_analysis.landmarks_3d
    cams = [Camera.orbit(10, 0, 0.6, 30, 64), Camera.orbit(160, 10, 0.6, 30, 64)]
    cond = isd.condition("a head", _identity(3), lm, cams)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    grads = []
    for compiled in (False, True):
        eager = isd._denoise
        if compiled:
            isd._denoise, note = compile_denoiser(isd._denoise_eager, "default", backend="aot_eager")
            assert note == "torch.compile aot_eager"
        try:
            img = images.clone().requires_grad_(True)
            loss, _ = isd(img, cond, 1000, torch.Generator().manual_seed(4))
            loss.backward()
            grads.append(img.grad)
        finally:
            isd._denoise = eager
    assert (grads[1] - grads[0]).norm() / grads[0].norm() < 1e-5


def test_unavailable_tensorrt_says_why_and_compiles_with_pytorch():
    from portrait3d.pipelines.acceleration import compile_denoiser, tensorrt_unavailable

    why = tensorrt_unavailable()
    if why is None:
        pytest.skip("TensorRT works here")
    fn, note = compile_denoiser(lambda x: x * 2, "tensorrt")
    assert note.startswith("torch.compile max-autotune (") and why in note


def test_geometry_pool_sculpts_heads_together(tiny_root, astronaut_analysis, tmp_path):
    """``geometry.heads_per_worker``: the pool step on two heads writes what the one-head step writes."""
    from portrait3d.engine import steps
    from portrait3d.engine.config import build_engine_config
    from portrait3d.errors import ConfigError
    from portrait3d.pipelines.codec import decode, encode
    from portrait3d.pipelines.pipeline import Portrait3D, RunContext
    from portrait3d.pipelines.types import SculptResult

    assert build_engine_config("paper", ["geometry.heads_per_worker=4"]).pools["geometry"].heads_per_worker == 4
    with pytest.raises(ConfigError, match="only the geometry pool"):
        build_engine_config("paper", ["texture.heads_per_worker=2"])
    p3d = Portrait3D(build_profile_config("tiny", models=str(tiny_root)), stages=("init", "sculpt"))
    analyses = [
        dataclasses.replace(astronaut_analysis, identity=_identity(s), identity_model="arcface_test") for s in (1, 2)
    ]
    works = {}
    for mode in ("alone", "together"):
        works[mode] = [tmp_path / mode / str(i) for i in range(2)]
        for w, a in zip(works[mode], analyses, strict=True):
            w.mkdir(parents=True)
            (w / steps.OUTPUTS["analysis"]).write_bytes(encode(a))
    ctxs = [RunContext(), RunContext()]
    for w in works["alone"]:
        steps.run_geometry(p3d, str(w), RunContext())
    steps.run_geometry_many(p3d, [str(w) for w in works["together"]], ctxs)
    assert all("sculpt" in c.timings and "init" in c.timings for c in ctxs)
    for w1, w2 in zip(works["alone"], works["together"], strict=True):
        one, two = (decode((w / steps.OUTPUTS["geometry"]).read_bytes(), SculptResult) for w in (w1, w2))
        assert [h["step"] for h in one.info["losses"]] == [h["step"] for h in two.info["losses"]]
        for h1, h2 in zip(one.info["losses"], two.info["losses"], strict=True):
            assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-3), h1["step"]
        assert abs(len(one.mesh.faces) - len(two.mesh.faces)) <= 0.01 * len(one.mesh.faces)
    p3d.close()
