"""The paper profile against the authors' release (ID-Sculpt): each loss, schedule, camera range and
conditioning rule checked against an independent computation of the release's own formula (numpy,
trimesh, diffusers' scheduler as the release drives it), on the tiny root's real model classes."""

import cv2
import numpy as np
import pytest
import torch
import trimesh

from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.losses import (
    aligned_depth_mse,
    mesh_regularizers,
    negative_pearson,
    normalized_disparity,
    squared_total_variation,
)
from portrait3d.pipelines.models import ModelRoot
from portrait3d.pipelines.random_views import ViewRanges, random_view, release_frame, view_angles, view_direction


def _brute_force_regularizers(v, f):
    """threestudio's Mesh.normal_consistency and Mesh.laplacian, from trimesh's edges and a dense L."""
    m = trimesh.Trimesh(v, f, process=False)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted face normals
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    vn /= np.linalg.norm(vn, axis=1, keepdims=True)
    e = m.edges_unique
    consistency = np.mean(1 - np.sum(vn[e[:, 0]] * vn[e[:, 1]], 1))
    A = np.zeros((len(v), len(v)))
    A[e[:, 0], e[:, 1]] = A[e[:, 1], e[:, 0]] = 1
    L = np.diag(A.sum(1)) - A
    return consistency, np.linalg.norm(L @ v, axis=1).mean()


def test_regularizers_are_the_releases():
    m = trimesh.creation.icosphere(subdivisions=2, radius=0.9)
    v = m.vertices * (1 + 0.1 * np.random.default_rng(0).standard_normal((len(m.vertices), 1)))
    got = mesh_regularizers(torch.tensor(v), torch.tensor(m.faces))
    want = _brute_force_regularizers(v, np.asarray(m.faces))
    assert np.allclose([x.item() for x in got], want, rtol=1e-6)


def test_regularizer_schedules_and_camera_ranges_are_the_releases():
    sc = build_profile_config("paper", models="unused").stages["sculpt"]
    assert (sc.w_normal_consistency(0), sc.w_normal_consistency(1000), sc.w_normal_consistency(1001)) == (
        500.0,
        500.0,
        1e4,
    )
    assert (sc.w_laplacian(999), sc.w_laplacian(6000)) == (1e5, 1.5e5)
    assert (sc.elevation_range, sc.distance_range, sc.fovy_range) == ((-15, 45), (3.5, 4.5), (25, 45))
    tc = build_profile_config("paper", models="unused").stages["texture"]
    assert (tc.refine_elevation_range, tc.refine_distance_range, tc.refine_fovy_range) == (
        (-20, 45),
        (2.5, 3.5),
        (30, 45),
    )
    assert (tc.refine_denoise_steps, tc.refine_lr, tc.w_l2, tc.w_reference) == (20, 0.02, 0.1, 1000.0)


def test_random_views_are_absolute_in_the_release_frame():
    """threestudio scales the centred initial mesh to a largest coordinate of 0.9, then samples
    cameras at absolute distances around its origin: a head twice as large is seen from twice as far."""
    head = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    head.vertices = head.vertices * [0.8, 1.2, 1.0] + [0.01, 0.02, -0.03]
    frame = release_frame(head.vertices)
    assert np.allclose(frame.centre, head.vertices.mean(0))
    assert np.isclose(np.abs(frame.to_units(head.vertices)).max(), 0.9)
    ranges = ViewRanges((-15, 45), (-180, 180), (3.5, 4.5), (25, 45))
    rng = np.random.default_rng(0)
    for _ in range(50):
        cam = random_view(rng, ranges, frame, 32)
        d = np.linalg.norm(cam.center - frame.centre) / frame.metres_per_unit
        az, el = view_angles(cam, frame.centre)
        assert 3.5 <= d <= 4.5 and 25 <= cam.fovy_deg <= 45 and -15 <= el <= 45
        assert np.allclose(cam.project(frame.centre[None])[0], 16)  # looks at the frame's origin
    big = release_frame(head.vertices * 2)
    assert np.isclose(big.metres_per_unit, 2 * frame.metres_per_unit)


@pytest.mark.parametrize(
    "azimuth, elevation, want",
    [(0, 0, "front"), (44, 10, "front"), (46, 0, "side"), (-100, 0, "side"), (125, 0, "back"), (-170, 30, "back")]
    + [(0, 61, "overhead"), (180, 70, "overhead"), (360 + 20, 0, "front")],
)
def test_view_directions_are_threestudios(azimuth, elevation, want):
    # threestudio: side by default; front if |azimuth| < 45; back if |azimuth| > 180 - 60; overhead above 60
    # (applied in that order, so overhead wins), with the azimuth shifted into [-180, 180).
    assert view_direction(azimuth, elevation) == want


def test_depth_losses_are_the_releases():
    rng = np.random.default_rng(0)
    ref = rng.random(200)
    pred = 0.7 * ref + 0.2 + 0.05 * rng.standard_normal(200)
    A = np.c_[ref, np.ones_like(ref)]
    fitted = A @ np.linalg.lstsq(A, pred, rcond=None)[0]
    got = aligned_depth_mse(torch.tensor(pred), torch.tensor(ref))
    assert np.isclose(got.item(), np.mean((fitted - pred) ** 2), rtol=1e-6)
    assert np.isclose(
        1 + negative_pearson(torch.tensor(pred), torch.tensor(ref)).item(), 1 - np.corrcoef(pred, ref)[0, 1]
    )
    depth = torch.tensor([[2.0, 4.0], [1.0, 0.0]])
    mask = depth > 0
    disp = normalized_disparity(depth, mask)
    # 1/z over the mask is (0.5, 0.25, 1): min-max to (1/3, 0, 1); off the mask 0.
    assert torch.allclose(disp, torch.tensor([[1 / 3, 0.0], [1.0, 0.0]]), atol=1e-6)


def test_refinement_losses_are_the_releases():
    from portrait3d.pipelines.texture_diffusion import reference_losses, refinement_losses

    rng = np.random.default_rng(1)
    img, target, photo = (torch.tensor(rng.random((3, 8, 8)), dtype=torch.float32) for _ in range(3))
    z = torch.zeros(1, 4, 1, 1)
    terms = refinement_losses(img, target, z, z)
    assert np.isclose(terms["l2"].item(), 0.5 * np.sum((img.numpy() - target.numpy()) ** 2), rtol=1e-6)
    head = torch.zeros(8, 8, dtype=torch.bool)
    head[2:6, 1:7] = True
    ref = reference_losses(img, photo, head)
    m = head.numpy()[None]
    assert np.isclose(ref["reference"].item(), np.abs(img.numpy() * m - photo.numpy() * m).mean(), rtol=1e-6)
    x = img.numpy()[None]  # threestudio's tv_loss: squared differences to the next row/column, edge repeated
    d1 = x - np.concatenate([x[:, :, 1:], x[:, :, -1:]], 2)
    d2 = x - np.concatenate([x[:, :, :, 1:], x[:, :, :, -1:]], 3)
    assert np.isclose(squared_total_variation(img).item(), (d1**2 + d2**2).sum(), rtol=1e-6)


@pytest.fixture(scope="module")
def sculpt_isd_stage(tiny_sculpt):
    return tiny_sculpt


@pytest.fixture(scope="module")
def texture_stage(tiny_texture):
    return tiny_texture


def test_refinement_targets_follow_the_releases_ddim(texture_stage):
    """The release sets its DDIM scheduler's num_train_timesteps to t, then set_timesteps(20), and
    steps from the latents noised at t (its alphas stay those of 1000 steps): diffusers' own
    DDIMScheduler driven that way is the reference."""
    from diffusers import DDIMScheduler

    from portrait3d.pipelines.texture_diffusion import release_ddim, release_timesteps

    guide = texture_stage.guide
    cond = guide.condition_with("a head", np.ones(512, np.float32), torch.rand(1, 3, 64, 64))
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t, steps in ((120, 20), (57, 4)):
        ref = DDIMScheduler.from_config(texture_stage.pipe.scheduler.config)
        ref.register_to_config(num_train_timesteps=t)
        ref.set_timesteps(steps)
        assert ref.timesteps.tolist() == release_timesteps(t, steps)
        z = z_t
        for ts in ref.timesteps:
            eps = guide.predict_noise(z, ts[None], cond, 10.0)
            z = ref.step(eps, ts, z).prev_sample
        assert torch.allclose(release_ddim(guide, z_t, t, cond, 10.0, steps), z, atol=1e-5)


def _text_unet(stage):
    from portrait3d.pipelines.models.diffusion import load_controlnet_pipeline

    return load_controlnet_pipeline(
        ModelRoot(stage.cfg.models), "geometry_normal", ("controlnet_landmarks",), id_adapter=False
    ).unet


def test_isd_conditions_on_the_identity_only_near_the_face(sculpt_isd_stage, astronaut_analysis):
    """As in the release: the ID adapter for |azimuth| < 70 only; elsewhere the plain UNet (the
    adapter's scale 0 gives exactly the UNet without an adapter)."""
    isd = sculpt_isd_stage.isd
    lm = astronaut_analysis.landmarks_3d
    cams = [Camera.orbit(az, 10, 0.6, 30, 64) for az in (30, 120, -65, 180)]
    a, b = (np.random.default_rng(s).normal(size=512).astype(np.float32) for s in (0, 1))
    cond_a, cond_b = (isd.condition("a head, normal map", ident, lm, cams) for ident in (a, b))
    assert cond_a.id_on.tolist() == [True, False, True, False]
    z_t = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300] * 4)
    eps_a, eps_b = isd.predict_noise(z_t, t, cond_a, 5.0), isd.predict_noise(z_t, t, cond_b, 5.0)
    same = [torch.allclose(eps_a[i], eps_b[i]) for i in range(4)]
    assert same == [False, True, False, True]
    # Each camera of the mixed batch gets what it gets alone.
    for i in range(4):
        alone = isd.condition("a head, normal map", a, lm, [cams[i]])
        assert torch.allclose(isd.predict_noise(z_t[i : i + 1], t[:1], alone, 5.0)[0], eps_a[i], atol=1e-5)
    # Behind the head: the UNet without any adapter, conditioned on the text and landmarks alone.
    plain = _text_unet(sculpt_isd_stage)
    back = isd.condition("a head, normal map", a, lm, [cams[1]])
    zin, tin = torch.cat([z_t[1:2]] * 2), torch.tensor([300, 300])
    down, mid = isd.controlnet(
        zin, tin, encoder_hidden_states=back.text, controlnet_cond=back.control, return_dict=False
    )
    eps = plain(
        zin,
        tin,
        encoder_hidden_states=back.text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
    ).sample
    eps_u, eps_c = eps.chunk(2)
    assert torch.allclose(eps_u + 5.0 * (eps_c - eps_u), eps_a[1:2], atol=1e-5)


def test_isd_prompts_name_the_view(sculpt_isd_stage):
    isd = sculpt_isd_stage.isd
    prompts = [
        isd.view_prompt("a head", *view_angles(Camera.orbit(az, el, 1, 30, 8)))
        for az, el in ((10, 0), (90, 0), (180, 0), (0, 80))
    ]
    assert prompts == ["a head, front view", "a head, side view", "a head, back view", "a head, overhead view"]
    # The text conditioning differs by view: the conditional half of each camera's text embedding.
    cond = isd.condition_with(
        "a head",
        np.ones(512, np.float32),
        torch.rand(2, 3, 64, 64),
        [Camera.orbit(0, 0, 1, 30, 64), Camera.orbit(180, 0, 1, 30, 64)],
    )
    assert not torch.allclose(cond.text[2], cond.text[3]) and torch.allclose(cond.text[0], cond.text[1])


def test_reference_maps_sample_as_the_release(sculpt_isd_stage, astronaut_analysis):
    """The reference maps: each base's own scheduler class and VAE, the ID adapter at 0.5 (normal) and
    0.1 (depth), and IPAdapterFaceID's default negative prompt; ISD keeps DDIM, the shared VAE and 1.0."""
    from diffusers import DDIMScheduler, PNDMScheduler

    from portrait3d.pipelines.guidance import ip_adapter_processors
    from portrait3d.pipelines.sculpt_isd import reference_canny

    s = sculpt_isd_stage
    assert isinstance(s.normal_ref.scheduler, PNDMScheduler) and isinstance(s.isd.pipe.scheduler, DDIMScheduler)
    assert s.normal_ref.vae is not s.isd.vae
    shared_w = next(iter(s.isd.vae.state_dict().values()))
    own_w = next(iter(s.normal_ref.vae.state_dict().values()))
    assert not torch.equal(shared_w, own_w)
    seen = []
    for pipe in (s.normal_ref, s.depth_ref):
        procs = ip_adapter_processors(pipe.unet)
        pipe.unet.register_forward_pre_hook(lambda *_, p=procs: seen.append(p[0].scale[0]))
    s.reference_maps(astronaut_analysis_arcface(astronaut_analysis), torch.Generator().manual_seed(0))
    n, m = len(s.normal_ref.scheduler.timesteps), len(s.depth_ref.scheduler.timesteps)  # PNDM repeats one step
    assert seen == [0.5] * n + [0.1] * m and n >= s.cfg.reference_steps
    assert [p.scale[0] for p in ip_adapter_processors(s.isd.unet)] == [1.0] * len(ip_adapter_processors(s.isd.unet))
    assert s.cfg.reference_negative_prompt == "monochrome, lowres, bad anatomy, worst quality, low quality"
    canny = reference_canny(astronaut_analysis, 512, (100, 200))
    rgb = cv2.resize(astronaut_analysis.crop, (512, 512), interpolation=cv2.INTER_AREA)
    assert (canny[..., 0] > 0).mean() < (cv2.Canny(rgb, 60, 150) > 0).mean()  # the release's higher thresholds


def astronaut_analysis_arcface(a):
    """The analysis with a 512-D identity (the reference maps' ID adapter needs one)."""
    import dataclasses

    return dataclasses.replace(a, identity=np.ones(512, np.float32) / np.sqrt(512), identity_model="arcface_test")


def test_normals_are_supervised_on_the_face_only(astronaut_analysis):
    from portrait3d.pipelines.sculpt_isd import ReferenceTargets, reference_losses

    S = 64
    a = astronaut_analysis
    cfg = build_profile_config("paper", models="unused").stages["sculpt"]
    refs = {"normal": np.tile(np.float32([0, 0, 1]), (S, S, 1)), "depth": np.linspace(0, 1, S * S).reshape(S, S)}
    t = ReferenceTargets.build(a, refs, S, 0.2, "cpu")
    assert 0 < t.face.sum() < (t.mask[..., 0] > 0.5).sum()  # the face is a part of the head
    normal = torch.zeros(S, S, 3)
    normal[..., 1] = 1.0
    out = {
        "silhouette": t.mask.clone(),
        "mask": t.mask[..., 0] > 0.5,
        "normal": normal,
        "depth": torch.full((S, S), 0.5) + torch.linspace(0, 0.1, S)[None],
    }
    base = reference_losses(out, t, cfg, 2000)
    off_face = out["mask"] & ~t.face
    out["normal"] = normal.clone()
    out["normal"][off_face] = torch.tensor([1.0, 0, 0])
    assert torch.equal(reference_losses(out, t, cfg, 2000)["normal"], base["normal"])
    assert set(base) == {"mask", "normal", "depth", "depth_rel"}


def test_the_tiny_root_mirrors_the_real_checkpoints_structure(tiny_root):
    from diffusers import ControlNetModel

    from portrait3d.pipelines.models.diffusion import load_controlnet_pipeline

    root = ModelRoot(str(tiny_root))
    pipe = load_controlnet_pipeline(root, "texture_base", ("controlnet_normal",))
    proj = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert (proj.num_tokens, proj.cross_attention_dim) == (16, 768)  # ip-adapter-faceid-portrait-v11_sd15
    tokens = pipe.unet.encoder_hid_proj([torch.zeros(2, 1, 512)])[0]
    assert tokens.shape == (2, 1, 16, 768)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 768
    net = ControlNetModel.from_pretrained(root.folder("controlnet_normal"))
    assert tuple(net.config.conditioning_embedding_out_channels) == (16, 32, 96, 256)
    assert pipe.vae.config.scaling_factor == 0.18215
    cfg = (tiny_root / "texture_base" / "scheduler" / "scheduler_config.json").read_text()
    assert '"PNDMScheduler"' in cfg and '"skip_prk_steps": true' in cfg


def test_dilation_is_the_releases():
    """The release grows the coloured texels by ``binary_dilation(iterations=r)`` and fills each new one
    from the nearest texel of the coloured region's 3-texel rim (``binary_erosion(iterations=3)``)."""
    from scipy import ndimage

    from portrait3d.pipelines.texturing import dilate_texture

    rng = np.random.default_rng(3)
    have = np.zeros((40, 40), bool)
    have[8:20, 5:30] = True
    have[25:33, 20:36] = True
    tex = rng.random((40, 40, 3))
    out, grown = dilate_texture(tex, have, radius=6)
    want_grown = ndimage.binary_dilation(have, iterations=6)
    assert np.array_equal(grown, want_grown)
    rim = have & ~ndimage.binary_erosion(have, iterations=3, border_value=1)
    rim_xy, rim_rgb = np.argwhere(rim), tex[rim]
    for i, j in np.argwhere(want_grown & ~have):
        d = ((rim_xy - [i, j]) ** 2).sum(1)
        src = np.flatnonzero((rim_rgb == out[i, j]).all(1))  # the rim texel whose colour was taken
        assert len(src) == 1 and d[src[0]] == d.min()
    assert np.array_equal(out[have], tex[have]) and np.array_equal(out[~want_grown], tex[~want_grown])


def test_deblur_uses_the_super_resolution_role(tiny_root, texture_stage):
    from portrait3d.pipelines.models.rrdbnet import RRDBNet, deblur

    root = ModelRoot(str(tiny_root))
    net = RRDBNet.from_state_dict(root.load_weights("super_resolution", root.file("super_resolution", (".pth",))))
    assert net.scale == 2 and len(net.body) == 1
    tex = torch.rand(3, 32, 32)
    out = deblur(tex, net)
    assert out.shape == tex.shape and 0 <= out.min() and out.max() <= 1
    assert texture_stage.sr is not None  # the tiny root has the role, so the stage deblurs
    with pytest.raises(Exception, match="RRDBNet"):
        RRDBNet.from_state_dict({"conv_first.weight": torch.zeros(8, 5, 3, 3)})
