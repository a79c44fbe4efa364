"""Time the paper profile's units of work, eager, compiled and with K heads batched through one UNet,
and project the time per head and the heads per hour per GPU at the release's step counts.

    python benchmarks/bench_paper.py --size full [--root DIR] [--compile max-autotune] [--heads 8]
    python benchmarks/bench_paper.py --size tiny                         # anywhere: checks the script

``full`` writes a model root of random models with the release's full-size architectures (SD1.5
UNets, ControlNets, VAE, CLIP-L-sized text encoders, an IP-Adapter FaceID; about 16 GB) unless
``--root`` already holds one, and loads it through the stages' own loading code: speed does not
depend on the values of the weights. Settings are the ``paper`` profile's (render 512, DMTet grid
256 in a 4 cm band, 15 inpainting views of 20 steps, 400 refinement steps); ``tiny`` uses the
``tiny`` profile's.

Timed (median of ``--repeat``, after one warm-up; CUDA synchronised), with peak GPU memory and the
FLOPs of one call (``torch.utils.flop_counter``), and the share of ``--peak-tflops`` reached:
- the ISD step alone (VAE encode, the guided UNet + ControlNet call, the gradient to the render):
  eager, compiled (``--compile``; its compile time apart), and ``--heads`` K heads in one call (per head);
- one geometry iteration of each kind: normal fit, reference view, ISD (DMTet extraction, rendering,
  losses, regularizers, backward, Adam);
- the two ID-aware reference maps (30 sampling steps each); surface extraction and decimation;
- the UV atlas; one inpainting view; one refinement step of each kind (guided: 20 DDIM steps).
Projected per head: fit x normal_fit_steps + (reference + ISD) x (steps - normal_fit_steps) / 2 +
reference maps + extraction + atlas + 15 views + refinement_steps / 2 x (guided + reference), with the
ISD iteration's ISD step replaced by the compiled one, then by the K-batched one per head. Heads per
hour per GPU: 3600 / that time (geometry and texture on one GPU one after the other; on two pools of
GPUs the same GPU-seconds). The head is an ellipsoid, not a person: nothing here depends on a face
except the inputs' shapes.
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
from typing import Any

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


def gpu_peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def flops_of(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure(name: str, fn: Callable[[], object], repeat: int, count_flops: bool = True) -> dict:
    """Median seconds, peak GPU memory and FLOPs of ``fn``."""
    gpu_peak_reset()
    seconds = timed(fn, repeat)
    return {"unit": name, "s": seconds, "peak_gb": gpu_peak_gb(), "flops": flops_of(fn) if count_flops else None}


def isd_step(sculpt: Any, a: Any, K: int, S: int, seed: int = 0) -> Callable[[], None]:
    """One ISD step of ``K`` heads in one call (renders stand in as leaf tensors), with backward."""
    from portrait3d.pipelines.camera import Camera
    from portrait3d.pipelines.guidance import Condition

    isd, dev = sculpt.isd, sculpt.device
    dist = float(np.linalg.norm(a.camera.center))
    cams = [Camera.orbit(360.0 * k / max(K, 1) - 60, 10, dist, 30, S) for k in range(K)]
    cond = Condition.stack([isd.condition("a head", a.identity, a.landmarks_3d, [c]) for c in cams])
    images = torch.rand(K, 3, S, S, device=dev, requires_grad=True)

    def run() -> None:
        gens = [torch.Generator().manual_seed(seed + k) for k in range(K)]
        _, info = isd(images, cond, 1000, gens)
        info["losses"].sum().backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--root", type=Path, help="model root to use (built there when it has no manifest)")
    ap.add_argument("--half", action="store_true", help="float16 weights (default: float32 weights, bf16 autocast)")
    ap.add_argument("--compile", default="max-autotune", help="torch.compile mode of the compiled run (or tensorrt)")
    ap.add_argument("--heads", type=int, default=8, help="K heads batched through one UNet")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak, TFLOP/s")
    ap.add_argument("--skip-texture", action="store_true", help="time the geometry units only")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    from portrait3d.pipelines.acceleration import compile_denoiser
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
    load_s = time.perf_counter() - t0
    dev = sculpt.device
    a, head = synthetic_inputs(512 if full else 128)
    S = sc.render_size
    ref_cam = a.camera.resized(S)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    r = args.repeat
    units = []

    # The ISD step: eager, compiled, K heads batched.
    units.append(measure("isd_step eager", isd_step(sculpt, a, 1, S), r))
    eager_denoise = sculpt.isd._denoise
    sculpt.isd._denoise, note = compile_denoiser(sculpt.isd._denoise_eager, args.compile)
    t0 = time.perf_counter()
    isd_step(sculpt, a, 1, S)()  # compiles
    _sync()
    compile_s = time.perf_counter() - t0
    units.append(measure(f"isd_step compiled ({note})", isd_step(sculpt, a, 1, S), r, count_flops=False))
    batched = measure(
        f"isd_step x{args.heads} compiled (per head)", isd_step(sculpt, a, args.heads, S), r, count_flops=False
    )
    batched["s"] /= args.heads
    units.append(batched)
    for u in units[1:]:  # the same arithmetic as eager's (the flop counter does not see into compiled code)
        u["flops"] = units[0]["flops"]
    sculpt.isd._denoise = eager_denoise

    # Geometry iterations (eager ISD inside).
    t0 = time.perf_counter()
    surf = DMTetSurface.from_mesh(
        head.vertices, head.faces, sc.grid_resolution, sc.band, sc.grid_margin, sc.deform_scale, dev
    )
    grid_s = time.perf_counter() - t0
    opt = torch.optim.Adam(surf.parameters(), lr=sc.lr)
    init_v, init_f = torch.tensor(head.vertices, device=dev), torch.tensor(head.faces, device=dev)
    mask = torch.ones(S, S, 1, device=dev) * 0.5
    frame, ranges = release_frame(head.vertices, sc.shape_extent), view_ranges(sc)
    centre = torch.tensor(frame.centre, dtype=torch.float32, device=dev)

    def iteration(kind: str) -> None:
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
            cond = sculpt.isd.condition(sc.prompt, a.identity, a.landmarks_3d, [cam], frame.centre)
            loss, _ = sculpt.isd(out["image"][None], cond, 0, gen)
        c, lap = mesh_regularizers((v - centre) / frame.metres_per_unit, f)
        opt.zero_grad()
        (loss + c + lap).backward()
        opt.step()
        surf.constrain()

    for kind in ("fit", "reference", "isd"):
        units.append(measure(f"{kind}_iteration", lambda k=kind: iteration(k), r, count_flops=kind == "isd"))
    units.append(measure("reference_maps", lambda: sculpt.reference_maps(a, gen), max(1, r // 2)))

    def extraction() -> None:
        from portrait3d.pipelines.mesh import decimate, largest_component

        with torch.no_grad():
            v, f = surf.extract()
        vn, fn = largest_component(v.cpu().numpy().astype(np.float32), f.cpu().numpy().astype(np.int64))
        if sc.max_faces and len(fn) > sc.max_faces:
            decimate(vn, fn, sc.max_faces)

    units.append(measure("extraction", extraction, 1, count_flops=False))
    sculpt.close()
    if not args.skip_texture:
        texture = DiffusionTexture(tc)
        t0 = time.perf_counter()
        at = build_atlas(texture.raster, texture.unwrapper, head, tc.texture_size, tc.atlas_padding)
        units.append({"unit": "atlas", "s": time.perf_counter() - t0, "peak_gb": None, "flops": None})
        views = trajectory_cameras(a.camera, tc.view_size)
        V = tc.view_size
        img = np.full((V, V, 3), 128, np.uint8)
        holes = np.zeros((V, V), bool)
        holes[:, V // 2 :] = True
        vt, ft = torch.tensor(head.vertices, device=dev), torch.tensor(head.faces, device=dev)
        normal = texture._normal_image(views[0], vt, ft)
        units.append(
            measure(
                "inpaint_view",
                lambda: texture.inpaint_view(img, holes, normal, a.identity, "a photo", gen),
                max(1, r // 2),
            )
        )
        tex = np.full((tc.texture_size, tc.texture_size, 3), 128.0, np.float32)
        texture.cfg = dataclasses.replace(tc, refine_steps=2)  # one guided step, one reference step
        both = measure("refine_step_pair", lambda: texture.refine(a, head, at, tex, "a photo", gen, Reporter("t")), 1)
        units.append({**both, "unit": "refine_step (mean of guided and reference)", "s": both["s"] / 2})
        texture.close()

    by = {u["unit"].split(" (")[0]: u for u in units}
    t = {k: u["s"] for k, u in by.items()}
    isd_eager, isd_compiled = t["isd_step eager"], t["isd_step compiled"]
    isd_k = t[f"isd_step x{args.heads} compiled"]
    n_fit, n_alt = sc.normal_fit_steps, (sc.steps - sc.normal_fit_steps) / 2
    fixed_geo = n_fit * t["fit_iteration"] + n_alt * t["reference_iteration"] + t["reference_maps"] + t["extraction"]
    isd_rest = t["isd_iteration"] - isd_eager  # rendering, extraction, regularizers, Adam around the ISD step
    geo = {m: fixed_geo + n_alt * (isd_rest + s) for m, s in (("eager", isd_eager), ("compiled", isd_compiled))}
    geo[f"x{args.heads}"] = fixed_geo + n_alt * (isd_rest + isd_k)
    tex_s = 0.0
    if not args.skip_texture:
        tex_s = t["atlas"] + len(PAPER_TRAJECTORY) * t["inpaint_view"] + tc.refine_steps * t["refine_step"]
    device = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {device}; size: {args.size}; half: {args.half}; autocast: {sc.autocast}; root built in "
        f"{build_s:.1f} s, geometry stage loaded in {load_s:.1f} s; compile ({note}) {compile_s:.1f} s; DMTet grid "
        f"({len(surf.grid)} vertices, {len(surf.tets)} tets) in {grid_s:.1f} s"
    )
    print(f"  {'unit':<40} {'ms':>10} {'peak GB':>8} {'GFLOP':>10} {'% peak':>7}")
    for u in units:
        fl = u["flops"]
        share = f"{100 * fl / u['s'] / (args.peak_tflops * 1e12):6.1f}%" if fl else ""
        peak = f"{u['peak_gb']:8.2f}" if u["peak_gb"] is not None else f"{'-':>8}"
        print(f"  {u['unit']:<40} {u['s'] * 1000:10.1f} {peak} {(fl or 0) / 1e9:10.1f} {share:>7}")
    for mode, g in geo.items():
        per_head = g + tex_s
        print(
            f"projected per head, ISD {mode:<9}: geometry {g:8.1f} s + texture {tex_s:7.1f} s = {per_head:8.1f} s "
            f"({per_head / 60:.2f} min; {3600 / per_head:6.1f} heads/hour/GPU)"
        )
    print(
        f"(release step counts: {sc.steps} geometry steps, {n_fit} normal fit, render {S}; {len(PAPER_TRAJECTORY)} "
        f"views x {tc.inpaint_steps} steps; {tc.refine_steps} refinement steps; UV {tc.texture_size})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "size": args.size,
                    "compile": note,
                    "compile_s": compile_s,
                    "heads": args.heads,
                    "units": units,
                    "projected_geometry_s": geo,
                    "projected_texture_s": tex_s,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
