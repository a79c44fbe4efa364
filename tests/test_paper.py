"""The paper profile's geometry and texture: DMTet, ISD on DMTet and on a UV map, and the whole
``tiny`` profile on a real portrait with tiny random models loaded through the real loading code."""

import json
import shutil

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from portrait3d.cli import app
from portrait3d.errors import ConfigError
from portrait3d.pipelines.camera import Camera
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.dmtet import DMTetSurface, cached_kuhn_grid, kuhn_grid, marching_tets, mesh_sdf
from portrait3d.pipelines.losses import mesh_regularizers
from portrait3d.pipelines.mesh import largest_component
from portrait3d.pipelines.random_views import release_frame
from portrait3d.pipelines.render import get_rasterizer
from portrait3d.pipelines.render.maps import render_geometry, sample_texture
from portrait3d.pipelines.stage import Reporter
from portrait3d.pipelines.types import AnalysisInput, InitInput

runner = CliRunner()


def _sphere_mesh(radius, subdivisions=4):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int64)


@pytest.mark.parametrize("resolution", [24, 40])
def test_marching_tets_of_a_sphere_is_watertight_with_the_right_radius(resolution):
    verts, tets = kuhn_grid(resolution)
    r = 0.55
    sdf = torch.from_numpy(np.linalg.norm(verts, axis=1) - r).requires_grad_(True)
    v, f = marching_tets(torch.from_numpy(verts), sdf, torch.from_numpy(tets))
    m = trimesh.Trimesh(v.detach().numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent and m.volume > 0  # closed, outward faces
    radii = np.linalg.norm(m.vertices, axis=1)
    cell = 2 / resolution
    assert abs(radii.mean() - r) < 0.05 * cell and radii.max() - radii.min() < 0.5 * cell
    assert abs(m.volume - 4 / 3 * np.pi * r**3) / (4 / 3 * np.pi * r**3) < 0.03
    v.sum().backward()  # positions are differentiable w.r.t. the SDF
    assert torch.isfinite(sdf.grad).all() and sdf.grad.abs().sum() > 0


def test_grid_is_conforming_positive_and_cached(tmp_path):
    verts, tets = kuhn_grid(6)
    p = verts[tets].astype(np.float64)
    vol = np.linalg.det(p[:, 1:] - p[:, :1]) / 6
    assert len(tets) == 6 * 6**3 and (vol > 0).all() and np.isclose(vol.sum(), 8.0)
    a = cached_kuhn_grid(6, tmp_path)
    assert (tmp_path / "tets" / "kuhn_6.npz").is_file()
    b = cached_kuhn_grid(6, tmp_path)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and np.array_equal(a[1], tets)


def test_mesh_sdf_and_a_narrow_band_surface_reproduce_the_mesh():
    v, f = _sphere_mesh(0.1)
    pts = np.array([[0, 0, 0], [0.05, 0, 0], [0.15, 0, 0], [0, -0.2, 0]], np.float64)
    sdf = mesh_sdf(v, f, pts)
    assert np.allclose(sdf, np.linalg.norm(pts, axis=1) - 0.1, atol=0.004)
    surf = DMTetSurface.from_mesh(v, f, resolution=48, band=0.02, margin=0.02)
    full = len(kuhn_grid(48)[1])
    assert len(surf.tets) < 0.5 * full  # the band keeps only cells near the surface
    sv, sf = surf.extract()
    m = trimesh.Trimesh(sv.detach().numpy(), sf.numpy(), process=False)
    assert m.is_watertight and abs(np.linalg.norm(m.vertices, axis=1).mean() - 0.1) < 0.003
    # An update that would push the surface out of the band: the band's boundary keeps it closed.
    with torch.no_grad():
        surf.sdf -= 1.0
    surf.constrain()
    m = trimesh.Trimesh(*(x.detach().numpy() for x in surf.extract()), process=False)
    assert surf.boundary.any() and m.is_watertight and m.volume > 4 / 3 * np.pi * 0.1**3


def test_dmtet_fits_a_toy_target_from_normal_maps():
    """The normal-fit phase on a toy target: a sphere's grid learns an ellipsoid's normal maps, with
    the stage's regularizers at the stage's weights in the release's normalised frame (the Laplacian's
    scaled to this coarse grid's cell, as the stage scales it)."""
    v, f = _sphere_mesh(0.1)
    surf = DMTetSurface.from_mesh(v, f, resolution=32, band=0.04, margin=0.04)
    target = trimesh.creation.icosphere(subdivisions=4, radius=0.1)
    target.vertices *= [1.3, 0.8, 1.0]
    tv, tf = torch.tensor(target.vertices, dtype=torch.float32), torch.tensor(target.faces)
    raster = get_rasterizer("torch")
    cams = [Camera.orbit(yaw, pitch, 0.6, 40, 48) for yaw, pitch in ((0, 0), (90, 0), (45, 30), (0, 80))]
    wants = [render_geometry(raster, c, tv, tf)["image"] for c in cams]
    opt = torch.optim.Adam(surf.parameters(), lr=0.02)
    frame = release_frame(v)
    lap_scale = frame.laplacian_scale(surf.cell)
    centre = torch.tensor(frame.centre, dtype=torch.float32)
    cfg = build_profile_config("paper", models="unused").stages["sculpt"]
    losses = []
    for _ in range(50):
        sv, sf = surf.extract()
        fit = sum(
            torch.nn.functional.mse_loss(render_geometry(raster, c, sv, sf)["image"], w)
            for c, w in zip(cams, wants, strict=True)
        )
        consistency, laplacian = mesh_regularizers((sv - centre) / frame.metres_per_unit, sf)
        opt.zero_grad()
        (
            cfg.w_fit(0) * fit + cfg.w_normal_consistency(0) * consistency + cfg.w_laplacian(0) * lap_scale * laplacian
        ).backward()
        opt.step()
        surf.constrain()
        losses.append(fit.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    sv, sf = surf.extract()
    body = trimesh.Trimesh(*largest_component(sv.detach().numpy(), sf.numpy()), process=False)
    assert body.is_watertight and len(body.faces) > 0.99 * len(sf)  # floaters, if any, are specks
    assert np.ptp(body.vertices[:, 0]) > 0.21  # it widens from 0.2 m toward the target's 0.26 m


def test_regularizers_prefer_a_smooth_surface():
    v, f = _sphere_mesh(1.0)
    smooth = mesh_regularizers(torch.tensor(v), torch.tensor(f))
    noisy = v * (1 + 0.05 * np.random.default_rng(0).standard_normal((len(v), 1))).astype(np.float32)
    rough = mesh_regularizers(torch.tensor(noisy), torch.tensor(f))
    assert rough[0] > 3 * smooth[0] and rough[1] > smooth[1]


@pytest.fixture(scope="module")
def arcface_analysis(tiny_root, astronaut_png):
    from portrait3d.pipelines.analysis import MediapipeAnalysis
    from portrait3d.pipelines.image_io import load_image

    stage = MediapipeAnalysis(MediapipeAnalysis.Config(identity="arcface", models=str(tiny_root)))
    try:
        return stage(AnalysisInput(load_image(astronaut_png)), Reporter("analysis"))
    finally:
        stage.close()


@pytest.fixture(scope="module")
def sculpt_stage(tiny_sculpt):
    return tiny_sculpt


def test_isd_gradient_reaches_the_dmtet_parameters_and_the_uv_map(sculpt_stage, arcface_analysis):
    from portrait3d.pipelines.init import HeadPriorInit

    a = arcface_analysis
    assert a.identity.shape == (512,) and a.identity_model.startswith("arcface_onnx")
    head = HeadPriorInit(HeadPriorInit.Config(subdivisions=3))(InitInput(a), Reporter("init"))
    surf = DMTetSurface.from_mesh(head.vertices, head.faces, resolution=32, band=0.02)
    v, f = surf.extract()
    cam = Camera.orbit(150, 20, float(np.linalg.norm(a.camera.center)), 25, 64)
    isd = sculpt_stage.isd
    cond = isd.condition("a head, normal map", a.identity, a.landmarks_3d, [cam])
    gen = torch.Generator().manual_seed(0)
    loss, info = isd(render_geometry(sculpt_stage.raster, cam, v, f)["image"][None], cond, 0, gen)
    loss.backward()
    for p in surf.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # The same guidance on a UV-textured render reaches the texels.
    texture = torch.full((3, 64, 64), 0.5, requires_grad=True)
    uv = torch.tensor(
        np.c_[
            np.arccos(np.clip(head.vertices[:, 1] / np.linalg.norm(head.vertices, axis=1), -1, 1)) / np.pi,
            0.5 + np.arctan2(head.vertices[:, 0], head.vertices[:, 2]) / (2 * np.pi),
        ],
        dtype=torch.float32,
    )
    faces = torch.tensor(head.faces)
    img, mask = sample_texture(sculpt_stage.raster, cam, torch.tensor(head.vertices), faces, uv, faces, texture)
    loss, _ = isd(img[None], cond, 0, gen)
    loss.backward()
    assert mask.any() and torch.isfinite(texture.grad).all() and texture.grad.abs().sum() > 0


def test_reference_maps_are_unit_normals_and_a_depth(sculpt_stage, arcface_analysis):
    maps = sculpt_stage.reference_maps(arcface_analysis, torch.Generator().manual_seed(0))
    S = sculpt_stage.cfg.render_size
    assert maps["normal"].shape == (S, S, 3) and maps["depth"].shape == (S, S)
    assert np.allclose(np.linalg.norm(maps["normal"], axis=-1), 1, atol=1e-3)
    assert 0 <= maps["depth"].min() and maps["depth"].max() <= 1


def test_tiny_profile_end_to_end_on_a_real_portrait(tiny_root, astronaut_png, tmp_path):
    out = tmp_path / "head"
    res = runner.invoke(app, ["generate", str(astronaut_png), "-o", str(out), "-p", "tiny", "-m", str(tiny_root), "-q"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "head.json").read_text())
    assert rec["profile"] == "tiny" and rec["config"]["impls"]["sculpt"] == "isd_dmtet"
    assert rec["caption"] and rec["caption"] != "a person"  # from the root's (tiny, random) caption model
    assert rec["config"]["stages"]["texture"]["models"] == str(tiny_root)
    assert rec["metrics"]["mesh"]["watertight"] and rec["metrics"]["mesh"]["volume_m3"] > 0
    sculpt = rec["metrics"]["sculpt"]
    assert sculpt["grid_tets"] > 0 and np.isfinite(sculpt["last"]["loss"])
    tex = rec["metrics"]["texture"]
    assert 0.9 < tex["coverage"] < 1 and tex["coverage"] == pytest.approx(tex["from_photo"] + tex["from_views"])
    reference = [h["reference"] for h in tex["refine_losses"] if "reference" in h]  # the photo at its view
    assert tex["from_views"] > 0 and len(reference) >= 2 and reference[-1] < reference[0]
    scene = trimesh.load(out / "head.glb")
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.faces) == rec["metrics"]["mesh"]["faces"]
    assert mesh.visual.material.baseColorTexture.size == (256, 256)


def test_caption_is_the_users_text_or_the_template(tiny_root, astronaut_png, tmp_path):
    from portrait3d.pipelines.analysis import MediapipeAnalysis
    from portrait3d.pipelines.image_io import load_image

    image = load_image(astronaut_png)
    for caption, want in (("", "a person"), ("an astronaut in a white suit", "an astronaut in a white suit")):
        stage = MediapipeAnalysis(MediapipeAnalysis.Config(caption=caption))
        try:
            assert stage(AnalysisInput(image), Reporter("analysis")).caption == want
        finally:
            stage.close()
    from portrait3d.pipelines.settings import make_config

    with pytest.raises(ConfigError, match="model root"):
        make_config(MediapipeAnalysis.Config, {"caption": "model"}, "analysis")


def test_paper_profile_needs_a_root_and_names_a_missing_role(tiny_root, astronaut_png, tmp_path):
    with pytest.raises(ConfigError, match="--models ROOT"):
        build_profile_config("paper")
    res = runner.invoke(app, ["generate", str(astronaut_png), "-o", str(tmp_path / "a"), "-p", "paper", "-q"])
    assert res.exit_code != 0 and "--models" in res.output
    broken = shutil.copytree(tiny_root, tmp_path / "root")
    shutil.rmtree(broken / "controlnet_normal")
    res = runner.invoke(
        app, ["generate", str(astronaut_png), "-o", str(tmp_path / "b"), "-p", "tiny", "-m", str(broken), "-q"]
    )
    assert res.exit_code != 0 and "controlnet_normal" in res.output
    assert not (tmp_path / "b" / "head.glb").exists()


def test_decimation_keeps_a_closed_mesh_of_the_same_shape():
    from portrait3d.pipelines.mesh import decimate

    v, f = _sphere_mesh(0.1, subdivisions=6)
    vd, fd = decimate(v, f, 20_000)
    m = trimesh.Trimesh(vd, fd, process=False)
    assert len(fd) <= 20_000 and m.is_watertight and m.volume > 0
    assert abs(m.volume - trimesh.Trimesh(v, f).volume) < 0.01 * m.volume
