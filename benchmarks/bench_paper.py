"""Time the paper profile's units of work and project the time per head.

    python benchmarks/bench_paper.py --size full [--root DIR] [--half]   # on a GPU: the real numbers
    python benchmarks/bench_paper.py --size tiny                         # anywhere: checks the script

``full`` writes a model root of random models with the release's full-size architectures (SD1.5
UNets, ControlNets, VAE, CLIP-L-sized text encoders, an IP-Adapter FaceID; about 16 GB) unless
``--root`` already holds one, and loads it through the stages' own loading code: speed does not
depend on the values of the weights. Settings are the ``paper`` profile's (render 512, DMTet grid
256 in a 4 cm band, 15 inpainting views of 20 steps, 400 refinement steps); ``tiny`` uses the
``tiny`` profile's.

Timed (median of ``--repeat``, after one warm-up; CUDA synchronised):
- one geometry iteration of each kind: normal fit, reference view, and ISD at a random camera
  (DMTet extraction, rendering, the loss, backward, Adam);
- the two ID-aware reference maps (30 sampling steps each);
- the UV atlas; one inpainting view; one refinement step.
Projected per head: fit x normal_fit_steps + (reference + ISD) x (steps - normal_fit_steps) / 2 +
reference maps + atlas + 15 views + refinement steps. Target (issue 4): under 10 minutes on one H100.
The head is an ellipsoid, not a person: nothing here depends on a face except the inputs' shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: kernels, caches, allocator
    times = []
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_inputs(size: int):
    """An ellipsoid head mesh and an analysis-shaped record of a frontal view of it."""
    from portrait3d.pipelines.camera import Camera
    from portrait3d.pipelines.mesh import symmetric_sphere
    from portrait3d.pipelines.types import HeadMesh, PortraitAnalysis

    dirs, faces, mirror = symmetric_sphere(5)  # scaling along the axes keeps the mirror map
    v = (dirs * [0.08, 0.11, 0.095]).astype(np.float32)
    head = HeadMesh(
        vertices=v, faces=np.array(faces), mirror=np.array(mirror), face_weight=np.zeros(len(v), np.float32)
    )
    cam = Camera.orbit(0, 0, 0.75, 28, size)
    yy, xx = np.mgrid[:size, :size]
    crop = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], -1).astype(np.uint8)
    mask = ((xx - size / 2) / (0.3 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2 < 1
    rng = np.random.default_rng(0)
    ident = rng.normal(size=512).astype(np.float32)
    a = PortraitAnalysis(
        crop=crop,
        crop_box=(0, 0, size, size),
        image_size=(size, size),
        face_box=(size * 0.3, size * 0.3, size * 0.7, size * 0.7),
        face_score=1.0,
        landmarks_px=np.zeros((478, 3)),
        landmarks_3d=np.zeros((478, 3)),
        rotation=np.eye(3),
        pose_ypr=(0.0, 0.0, 0.0),
        camera=cam,
        head_mask=mask,
        canny=(rng.random((size, size)) > 0.9).astype(np.uint8) * 255,
        identity=ident / np.linalg.norm(ident),
        identity_model="random",
        input_sha256="0" * 64,
        caption="a person",
    )
    return a, head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--root", type=Path, help="model root to use (built there when it has no manifest)")
    ap.add_argument("--half", action="store_true", help="float16 diffusion models (the settings use float32)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.dmtet import DMTetSurface
    from portrait3d.pipelines.losses import mesh_regularizers
    from portrait3d.pipelines.models.tiny import build_tiny_root
    from portrait3d.pipelines.random_views import random_view, release_frame
    from portrait3d.pipelines.render.maps import render_geometry
    from portrait3d.pipelines.sculpt_isd import ISDDMTetSculpt, view_ranges
    from portrait3d.pipelines.stage import Reporter
    from portrait3d.pipelines.texture_diffusion import DiffusionTexture
    from portrait3d.pipelines.texturing import PAPER_TRAJECTORY, build_atlas, trajectory_cameras

    full = args.size == "full"
    root = args.root or Path(tempfile.mkdtemp(prefix="p3d-root-"))
    t0 = time.perf_counter()
    if not (root / "manifest.json").is_file():
        build_tiny_root(root, full=full)
    build_s = time.perf_counter() - t0
    cfg = build_profile_config(
        "paper" if full else "tiny",
        models=str(root),
        overrides=["sculpt.half=true", "texture.half=true"] if args.half else None,
    )
    sc, tc = cfg.stages["sculpt"], cfg.stages["texture"]
    t0 = time.perf_counter()
    sculpt = ISDDMTetSculpt(sc)
    texture = DiffusionTexture(tc)
    load_s = time.perf_counter() - t0
    dev = sculpt.device
    a, head = synthetic_inputs(512 if full else 128)
    S = sc.render_size
    ref_cam = a.camera.resized(S)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)

    t0 = time.perf_counter()
    surf = DMTetSurface.from_mesh(
        head.vertices, head.faces, sc.grid_resolution, sc.band, sc.grid_margin, sc.deform_scale, dev
    )
    grid_s = time.perf_counter() - t0
    opt = torch.optim.Adam(surf.parameters(), lr=sc.lr)
    init_v, init_f = torch.tensor(head.vertices, device=dev), torch.tensor(head.faces, device=dev)
    mask = torch.ones(S, S, 1, device=dev) * 0.5
    control = torch.rand(1, 3, S, S)
    frame, ranges = release_frame(head.vertices, sc.shape_extent), view_ranges(sc)
    centre = torch.tensor(frame.centre, dtype=torch.float32, device=dev)

    def step(kind: str) -> None:
        v, f = surf.extract()
        if kind == "fit":
            cam = random_view(rng, ranges, frame, S)
            out = render_geometry(sculpt.raster, cam, v, f)
            with torch.no_grad():
                want = render_geometry(sculpt.raster, cam, init_v, init_f)["image"]
            loss = torch.nn.functional.mse_loss(out["image"], want)
        elif kind == "reference":
            out = render_geometry(sculpt.raster, ref_cam, v, f)
            loss = torch.nn.functional.mse_loss(out["silhouette"], mask) + out["depth"].mean() * 0
        else:
            cam = random_view(rng, ranges, frame, S)
            out = render_geometry(sculpt.raster, cam, v, f)
            cond = sculpt.isd.condition_with(sc.prompt, a.identity, control)
            loss, _ = sculpt.isd(out["image"][None], cond, 0, gen)
        c, lap = mesh_regularizers((v - centre) / frame.metres_per_unit, f)
        opt.zero_grad()
        (loss + c + lap).backward()
        opt.step()
        surf.constrain()

    r = args.repeat
    t = {
        "fit_iteration": timed(lambda: step("fit"), r),
        "reference_iteration": timed(lambda: step("reference"), r),
        "isd_iteration": timed(lambda: step("isd"), r),
    }
    t["reference_maps"] = timed(lambda: sculpt.reference_maps(a, gen), max(1, r // 2))
    mesh = head
    t0 = time.perf_counter()
    at = build_atlas(texture.raster, texture.unwrapper, mesh, tc.texture_size, tc.atlas_padding)
    t["atlas"] = time.perf_counter() - t0
    views = trajectory_cameras(a.camera, tc.view_size)
    V = tc.view_size
    img = np.full((V, V, 3), 128, np.uint8)
    holes = np.zeros((V, V), bool)
    holes[:, V // 2 :] = True
    vt, ft = torch.tensor(mesh.vertices, device=dev), torch.tensor(mesh.faces, device=dev)
    normals = [texture._normal_image(c, vt, ft) for c in views]
    t["inpaint_view"] = timed(
        lambda: texture.inpaint_view(img, holes, normals[0], a.identity, "a photo", gen), max(1, r // 2)
    )
    tex = np.full((tc.texture_size, tc.texture_size, 3), 128.0, np.float32)
    n_ref, refine_steps = 4, tc.refine_steps
    texture.cfg = dataclasses.replace(tc, refine_steps=n_ref)
    t["refine_step"] = timed(lambda: texture.refine(a, mesh, at, tex, "a photo", gen, Reporter("texture")), 1) / n_ref

    geo = (
        sc.normal_fit_steps * t["fit_iteration"]
        + (sc.steps - sc.normal_fit_steps) / 2 * (t["reference_iteration"] + t["isd_iteration"])
        + t["reference_maps"]
    )
    tex_s = t["atlas"] + len(PAPER_TRAJECTORY) * t["inpaint_view"] + refine_steps * t["refine_step"]
    device = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; size: {args.size}; half: {args.half}; root built in {build_s:.1f} s, "
        f"stages loaded in {load_s:.1f} s; DMTet grid ({len(surf.grid)} vertices, {len(surf.tets)} tets) "
        f"in {grid_s:.1f} s"
    )
    for k, v in t.items():
        print(f"  {k:<22} {v * 1000:10.1f} ms")
    print(f"projected geometry: {geo:8.1f} s  ({sc.steps} steps, {sc.normal_fit_steps} normal fit, render {S})")
    print(
        f"projected texture:  {tex_s:8.1f} s  ({len(PAPER_TRAJECTORY)} views x {tc.inpaint_steps} steps, "
        f"{refine_steps} refinement steps, UV {tc.texture_size})"
    )
    print(f"projected per head: {geo + tex_s:8.1f} s  (target on one H100: < 600 s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "size": args.size,
                    "half": args.half,
                    "timings_s": t,
                    "grid_vertices": len(surf.grid),
                    "grid_tets": len(surf.tets),
                    "projected_geometry_s": geo,
                    "projected_texture_s": tex_s,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
