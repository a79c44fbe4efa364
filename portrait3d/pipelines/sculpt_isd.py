"""Stages 3-4 of the ``paper`` profile: ID-aware geometry supervision and geometry sculpting with ISD
on DMTet.

1. ID-aware reference maps (stage 3): the normal- and depth-adapted SD1.5 models, each with its own
   scheduler and VAE as in the release, conditioned on the portrait's canny edges (canny ControlNet,
   thresholds 100/200 at the render size) and the person's ArcFace embedding (IP-Adapter FaceID at
   0.5 for normals, 0.1 for depth), sample a normal map and a depth map of the reference view.
2. DMTet (stage 4): a narrow-band tetrahedral grid around the stage-2 mesh, its SDF initialised from
   that mesh, SDF values and vertex offsets optimised with Adam:
   - normal fitting: for the first steps, normal maps at random views match the stage-2 mesh's;
   - then reference-view losses alternate with ISD (the normal-adapted model with the landmark
     ControlNet; the identity only near the face; view-dependent prompts) at random cameras: the head
     mask (MSE of the silhouette), the normals on the face (face parsing), and the depth map by a
     least-squares-aligned MSE and by ``1 - Pearson``;
   - normal consistency and Laplacian regularizers on the extracted mesh throughout, in the
     release's forms and its normalised frame (``random_views.release_frame``); the Laplacian's
     weight is scaled by the ratio of the release's grid cell to ours (``laplacian_scale``).

Random cameras are absolute values in the release's normalised frame (distance 3.5-4.5 units, fovy
25-45 degrees). Losses are read back from the device only every ``log_every`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, OptimizationError
from .dmtet import DMTetSurface
from .guidance import Condition, IDGuidance, ISDSettings, id_embeds, ip_adapter_processors, ip_adapter_scale
from .image_io import mask_coverage
from .losses import aligned_depth_mse, mask_mse, mesh_regularizers, negative_pearson, normalized_disparity
from .mesh import decimate, largest_component, transfer_attributes
from .random_views import SHAPE_INIT_EXTENT, ViewRanges, random_view, release_frame
from .registry import register
from .render import get_rasterizer
from .render.maps import normal_from_image, render_geometry
from .schedule import Schedule
from .settings import DiffusionStageSettings, setting
from .stage import Reporter
from .types import HeadMesh, PortraitAnalysis, SculptInput, SculptResult

# Shares of the stage's progress: reference maps, then the grid, then the optimization.
_MAPS, _GRID = 0.05, 0.1


REFERENCE_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # IPAdapterFaceID.generate's


def view_ranges(cfg: ISDDMTetSculpt.Config) -> ViewRanges:
    return ViewRanges(cfg.elevation_range, cfg.azimuth_range, cfg.distance_range, cfg.fovy_range)


def reference_canny(a: PortraitAnalysis, size: int, thresholds: tuple[int, int]) -> np.ndarray:
    """The canny ControlNet's input: edges of the crop at ``size`` with the background outside the
    head mask black (the release detects edges on its background-removed RGBA crop), ``(S, S, 3)`` uint8."""
    import cv2

    rgb = cv2.resize(a.crop, (size, size), interpolation=cv2.INTER_AREA)
    rgb[mask_coverage(a.head_mask, size) < 0.5] = 0
    edges = cv2.Canny(rgb, *thresholds)
    return np.repeat(edges[..., None], 3, -1)


def face_region(a: PortraitAnalysis, size: int) -> np.ndarray:
    """The face (no hair, ears, neck) at ``size``: the analysis's face mask, else the head mask."""
    return mask_coverage(a.face_mask if a.face_mask is not None else a.head_mask, size) > 0.5


@dataclass
class ReferenceTargets:
    """What the reference view is fitted to, at the render size ``S``."""

    mask: torch.Tensor  # (S, S, 1) head-mask coverage in [0, 1]
    known: torch.Tensor  # (S, S, 1) share of each pixel on the photo: past its edge the mask says nothing
    face: torch.Tensor  # (S, S) bool: the face, where the reference normals apply
    normal: torch.Tensor | None = None  # (S, S, 3) unit normals, OpenGL camera frame
    depth: torch.Tensor | None = None  # (S, S) reference depth, min-max normalised on its foreground
    depth_region: torch.Tensor | None = None  # (S, S) bool: the reference depth's foreground

    @classmethod
    def build(
        cls, a: PortraitAnalysis, refs: dict[str, np.ndarray] | None, size: int, foreground: float, device: Any
    ) -> ReferenceTargets:
        t = cls(
            mask=torch.from_numpy(mask_coverage(a.head_mask, size))[..., None].to(device),
            known=torch.from_numpy(mask_coverage(a.photo_pixels(), size))[..., None].to(device),
            face=torch.from_numpy(face_region(a, size)).to(device),
        )
        if refs is not None:
            t.normal = torch.from_numpy(refs["normal"]).to(device)
            depth = torch.from_numpy(refs["depth"]).float().to(device)
            t.depth_region = depth > foreground
            if t.depth_region.sum() > 16:
                lo, hi = depth[t.depth_region].min(), depth[t.depth_region].max()
                t.depth = torch.where(t.depth_region, (depth - lo) / (hi - lo + 1e-7), torch.zeros_like(depth))
        return t


def reference_losses(
    out: dict[str, torch.Tensor], t: ReferenceTargets, cfg: ISDDMTetSculpt.Config, step: int
) -> dict[str, torch.Tensor]:
    """The reference view's weighted losses, as the release's ``ref_guidance`` step computes them, for
    the maps ``out`` of :func:`render_geometry`: head mask MSE; normal MSE on the face; depth as an MSE
    after least-squares alignment and as ``1 - Pearson``, on the reference depth's foreground, against
    the render's normalised disparity. The mask MSE leaves out what lies past the photo's edge."""
    terms = {"mask": cfg.w_mask(step) * mask_mse(out["silhouette"], t.mask, t.known)}
    face = out["mask"] & t.face
    if t.normal is not None and face.sum() > 16:  # boolean masks read the device anyway
        terms["normal"] = cfg.w_normal(step) * F.mse_loss(out["normal"][face], t.normal[face])
    if t.depth is not None and out["mask"].sum() > 16:
        pred = normalized_disparity(out["depth"], out["mask"])[t.depth_region]
        ref = t.depth[t.depth_region]
        terms["depth"] = cfg.w_depth(step) * aligned_depth_mse(pred, ref)
        terms["depth_rel"] = cfg.w_depth_rel(step) * (1 + negative_pearson(pred, ref))
    return terms


@register("sculpt", "isd_dmtet")
class ISDDMTetSculpt:
    @dataclass(frozen=True)
    class Config(DiffusionStageSettings):
        grid_resolution: int = setting(256, "DMTet cube cells per side of the grid", ge=8, le=1024)
        grid_margin: float = setting(
            0.03, "free space between the stage-2 mesh's bounding box and the grid cube, metres", ge=0, le=1
        )
        band: float = setting(
            0.04, "keep grid cells within this distance of the stage-2 mesh, metres (0: whole grid)", ge=0, le=1
        )
        max_faces: int = setting(
            60_000, "decimate the extracted mesh to at most this many faces (quadric error; 0: keep all)", ge=0
        )
        deform_scale: float = setting(0.5, "largest vertex offset of the grid, in cells", ge=0, le=1)
        steps: int = setting(6000, "optimization steps in all", ge=1, le=1_000_000)
        normal_fit_steps: int = setting(1000, "first steps that fit the stage-2 mesh's normals only", ge=0)
        lr: float = setting(0.005, "Adam learning rate of SDF and offsets (grid units)", gt=0, le=1)
        render_size: int = setting(512, "render side for losses and ISD", ge=16, le=2048)
        prompt: str = setting(
            "a DSLR photo of the head of {caption}", "text condition; {caption} is the portrait's caption"
        )
        prompt_suffix: str = setting(
            ", black background, normal map", "appended to the prompt for the normal/depth models"
        )
        guidance_scale: float = setting(50.0, "ISD classifier-free guidance scale", ge=0)
        t_min: Schedule = setting(
            Schedule.parse(0.02), "lowest ISD noise level (fraction of training steps)", ge=0, le=1
        )
        t_max: Schedule = setting(Schedule.parse(0.5), "highest ISD noise level", ge=0, le=1)
        landmark_scale: float = setting(1.0, "landmark ControlNet scale in ISD", ge=0)
        id_scale: float = setting(1.0, "IP-Adapter FaceID scale", ge=0)
        id_max_azimuth: float = setting(
            70.0, "ISD conditions on the identity only within this azimuth of the face, degrees", ge=0
        )
        view_prompts: bool = setting(True, "append the view's direction to the ISD prompt (front/side/back/overhead)")
        elevation_range: tuple[float, float] = setting((-15.0, 45.0), "random camera elevation, degrees", ge=-90, le=90)
        azimuth_range: tuple[float, float] = setting((-180.0, 180.0), "random camera azimuth, degrees", ge=-360, le=360)
        distance_range: tuple[float, float] = setting(
            (3.5, 4.5),
            "random camera distance in the release's normalised frame (the head's extent: shape_extent)",
            gt=0,
        )
        fovy_range: tuple[float, float] = setting((25.0, 45.0), "random camera fovy, degrees", gt=0, lt=180)
        shape_extent: float = setting(
            SHAPE_INIT_EXTENT,
            "largest coordinate of the stage-2 head in the normalised frame (threestudio's shape_init_params)",
            gt=0,
        )
        reference_maps: bool = setting(True, "sample ID-aware reference normal/depth maps (stage 3)")
        reference_steps: int = setting(30, "sampling steps of each reference map", ge=1, le=1000)
        reference_guidance: float = setting(7.5, "CFG scale of the reference maps", ge=0)
        reference_id_scales: tuple[float, float] = setting(
            (0.5, 0.1), "IP-Adapter FaceID scale of the normal and of the depth reference map", ge=0
        )
        reference_prompt_suffix: str = setting(
            ", black background, {map} map, head only", "appended to the caption for a reference map ({map}: its kind)"
        )
        reference_negative_prompt: str = setting(REFERENCE_NEGATIVE, "negative prompt of the reference maps")
        canny_thresholds: tuple[int, int] = setting(
            (100, 200), "canny thresholds of the reference maps' edge image (at render_size)", ge=0, le=1000
        )
        canny_scale: float = setting(1.0, "canny ControlNet scale of the reference maps", ge=0)
        depth_foreground: float = setting(
            0.2, "reference depth brighter than this is the head (where the depth losses apply)", ge=0, lt=1
        )
        w_sd: Schedule = setting(Schedule.parse(1.0), "ISD loss weight", ge=0)
        w_fit: Schedule = setting(Schedule.parse(1e4), "normal-fit loss weight (normal-fit phase)", ge=0)
        w_mask: Schedule = setting(Schedule.parse(100.0), "reference head-mask MSE weight", ge=0)
        w_depth: Schedule = setting(Schedule.parse(100.0), "reference depth MSE weight (least-squares aligned)", ge=0)
        w_depth_rel: Schedule = setting(Schedule.parse(100.0), "reference depth 1 - Pearson weight", ge=0)
        w_normal: Schedule = setting(Schedule.parse(1e4), "reference normal MSE weight, on the face", ge=0)
        w_normal_consistency: Schedule = setting(
            Schedule(((1000, 500.0), (1001, 1e4))),
            "normal consistency weight (the release's: 500, 1e4 from step 1001)",
            ge=0,
        )
        w_laplacian: Schedule = setting(
            Schedule(((1000, 1e5), (1001, 1.5e5))),
            "Laplacian smoothness weight (mean |L v| in the normalised frame; 1e5, 1.5e5 from step 1001), "
            "for the release's grid cell: scaled by release cell / our cell",
            ge=0,
        )

        def validate(self) -> None:
            if self.normal_fit_steps > self.steps:
                raise ConfigError("sculpt.normal_fit_steps must lie in [0, steps]")
            if self.render_size % 8:
                raise ConfigError("sculpt.render_size must be a multiple of 8 (the VAE's factor)")
            for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range", "canny_thresholds"):
                lo, hi = getattr(self, name)
                if lo > hi:
                    raise ConfigError(f"sculpt.{name} must be [low, high], got [{lo}, {hi}]")

    def __init__(self, cfg: ISDDMTetSculpt.Config) -> None:
        from .models import ModelRoot
        from .models.diffusion import (
            load_controlnet_pipeline,
            load_scheduler,
            load_vae,
            resolve_device,
            with_controlnet,
        )

        if not cfg.models:
            raise ConfigError("the isd_dmtet sculpt stage needs a model root: --models ROOT")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = torch.float16 if cfg.half else torch.float32
        root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        # The reference maps sample as the base's own pipeline does (its scheduler and VAE); ISD uses
        # the shared VAE and DDIM's schedule. One UNet per base: the canny and landmark ControlNets share it.
        kw = dict(id_scale=cfg.id_scale, dtype=dtype, device=self.device, own_components=True)
        self.normal_ref = load_controlnet_pipeline(root, "geometry_normal", ("controlnet_canny",), **kw)
        self.depth_ref = (
            load_controlnet_pipeline(root, "geometry_depth", ("controlnet_canny",), **kw)
            if cfg.reference_maps
            else None
        )
        isd_pipe = with_controlnet(
            self.normal_ref,
            root,
            "controlnet_landmarks",
            vae=load_vae(root, None, dtype).to(self.device).requires_grad_(False),
            scheduler=load_scheduler(root.folder("geometry_normal") / "scheduler", "geometry_normal scheduler"),
        )
        self.isd = IDGuidance(
            isd_pipe,
            ISDSettings(
                guidance_scale=cfg.guidance_scale,
                t_min=cfg.t_min,
                t_max=cfg.t_max,
                control_scale=cfg.landmark_scale,
                id_scale=cfg.id_scale,
                id_max_azimuth=cfg.id_max_azimuth,
                view_prompts=cfg.view_prompts,
            ),
            autocast=cfg.autocast,
            compile=cfg.compile,
        )
        if cfg.compile != "none":
            self.isd.warm_up(1, cfg.render_size)
        self.raster = get_rasterizer(cfg.rasterizer, self.device)

    def close(self) -> None:
        self.normal_ref = self.depth_ref = self.isd = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- stage 3 ---------------------------------------------------------------------------
    @torch.no_grad()
    def reference_maps(
        self, a: PortraitAnalysis, generator: torch.Generator, report: Reporter | None = None
    ) -> dict[str, np.ndarray]:
        """ID-aware normal ``(S, S, 3)`` (unit, OpenGL camera frame) and depth ``(S, S)`` (bigger is
        nearer, [0, 1]) of the reference view, ``S = render_size``."""
        from PIL import Image

        from .models.diffusion import step_callback

        cfg, S = self.cfg, self.cfg.render_size
        report = report or Reporter("sculpt")
        canny = Image.fromarray(reference_canny(a, S, cfg.canny_thresholds))
        out = {}
        maps = (("normal", self.normal_ref), ("depth", self.depth_ref))
        for k, ((name, pipe), id_scale) in enumerate(zip(maps, cfg.reference_id_scales, strict=True)):
            ids = id_embeds(a.identity, self.device, pipe.unet.dtype)
            with ip_adapter_scale(ip_adapter_processors(pipe.unet), id_scale), self.isd.amp():
                img = pipe(
                    prompt=a.caption + cfg.reference_prompt_suffix.replace("{map}", name),
                    negative_prompt=cfg.reference_negative_prompt,
                    image=canny,
                    height=S,
                    width=S,
                    num_inference_steps=cfg.reference_steps,
                    guidance_scale=cfg.reference_guidance,
                    controlnet_conditioning_scale=cfg.canny_scale,
                    ip_adapter_image_embeds=[ids],
                    generator=generator,
                    output_type="np",
                    callback_on_step_end=step_callback(report.span(k / 2, (k + 1) / 2), cfg.reference_steps),
                ).images[0]
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            out[name] = normal_from_image(img) if name == "normal" else img.mean(-1) / 255.0
        return out

    # -- stage 4 ---------------------------------------------------------------------------
    def __call__(self, inputs: SculptInput, report: Reporter) -> SculptResult:
        return self.sculpt_many([inputs], [report])[0]

    def sculpt_many(self, inputs: list[SculptInput], reports: list[Reporter]) -> list[SculptResult]:
        """Sculpt several heads at once: each keeps its own grid, optimiser, cameras, landmarks and
        identity, and their ISD steps go through the UNet as one batch. Each head comes out as it
        would alone (its random draws are those of a run of its own)."""
        cfg = self.cfg
        # Seeded from the global generators, which the pipeline seeds per stage from the config.
        seeds = (int(torch.randint(0, 2**31, (1,))), int(np.random.randint(2**31)))
        heads = [self._start(inp, rep, seeds) for inp, rep in zip(inputs, reports, strict=True)]
        for step in range(cfg.steps):
            meshes = [h.extract(step, cfg.steps) for h in heads]
            if step < cfg.normal_fit_steps:
                terms = [h.fit_terms(self.raster, m, step, cfg) for h, m in zip(heads, meshes, strict=True)]
            elif (step - cfg.normal_fit_steps) % 2 == 0:
                terms = [h.reference_terms(self.raster, m, step, cfg) for h, m in zip(heads, meshes, strict=True)]
            else:
                terms = self._isd_terms(heads, meshes, step)
            total = sum(h.loss(t, m, step, cfg) for h, t, m in zip(heads, terms, meshes, strict=True))
            for h in heads:
                h.opt.zero_grad()
            total.backward()
            for h, t in zip(heads, terms, strict=True):
                h.update(t, step, cfg)
        return [h.finish(self.cfg) for h in heads]

    def _start(self, inputs: SculptInput, report: Reporter, seeds: tuple[int, int]) -> _Head:
        cfg = self.cfg
        a = inputs.analysis
        if a.identity.shape[-1] != 512:
            raise ConfigError(
                f"ISD needs a 512-D ArcFace identity; the analysis gave {a.identity_model} "
                f"({a.identity.shape[-1]}-D): use analysis.identity=arcface"
            )
        gen = torch.Generator().manual_seed(seeds[0])
        refs = None
        if cfg.reference_maps:
            report(0.0, "ID-aware reference maps")
            refs = self.reference_maps(a, gen, report.span(0.0, _MAPS))
        report(_MAPS, "DMTet grid")
        return _Head.start(inputs, report, gen, np.random.default_rng(seeds[1]), refs, cfg, self.device)

    def _isd_terms(self, heads: list[_Head], meshes: list, step: int) -> list[dict[str, Any]]:
        """One ISD step of every head, through the UNet as one batch."""
        images, conds = [], []
        for h, (v, f) in zip(heads, meshes, strict=True):
            cam = random_view(h.rng, h.ranges, h.frame, self.cfg.render_size)
            images.append(render_geometry(self.raster, cam, v, f)["image"])
            conds.append(self.isd.condition(h.cond_text, h.a.identity, h.a.landmarks_3d, [cam], h.frame.centre))
        _, info = self.isd(torch.stack(images), Condition.stack(conds), step, [h.gen for h in heads])
        return [{"sd": self.cfg.w_sd(step) * info["losses"][i], "t": info["t"][i]} for i in range(len(heads))]


@dataclass
class _Head:
    """One head's DMTet optimisation: its inputs, random draws, grid, optimiser and loss history."""

    a: PortraitAnalysis
    initial: HeadMesh
    report: Reporter
    gen: torch.Generator
    rng: np.random.Generator
    targets: ReferenceTargets
    ref_cam: Any
    surf: DMTetSurface
    opt: torch.optim.Optimizer
    init_v: torch.Tensor
    init_f: torch.Tensor
    frame: Any
    centre: torch.Tensor
    ranges: ViewRanges
    lap_scale: float
    cond_text: str
    history: list = field(default_factory=list)

    @classmethod
    def start(
        cls,
        inputs: SculptInput,
        report: Reporter,
        gen: torch.Generator,
        rng: np.random.Generator,
        refs: dict | None,
        cfg: ISDDMTetSculpt.Config,
        dev: torch.device,
    ) -> _Head:
        a, head, S = inputs.analysis, inputs.initial, cfg.render_size
        surf = DMTetSurface.from_mesh(
            head.vertices, head.faces, cfg.grid_resolution, cfg.band, cfg.grid_margin, cfg.deform_scale, dev
        )
        frame = release_frame(head.vertices, cfg.shape_extent)
        return cls(
            a=a,
            initial=head,
            report=report.span(_GRID, 0.95),
            gen=gen,
            rng=rng,
            targets=ReferenceTargets.build(a, refs, S, cfg.depth_foreground, dev),
            ref_cam=a.camera.resized(S),
            surf=surf,
            opt=torch.optim.Adam(surf.parameters(), lr=cfg.lr),
            init_v=torch.tensor(head.vertices, device=dev),
            init_f=torch.tensor(head.faces, device=dev),
            frame=frame,
            centre=torch.tensor(frame.centre, dtype=torch.float32, device=dev),
            ranges=view_ranges(cfg),
            lap_scale=frame.laplacian_scale(surf.cell),
            cond_text=cfg.prompt.replace("{caption}", a.caption) + cfg.prompt_suffix,
        )

    def extract(self, step: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.report(step / steps, f"step {step + 1}/{steps}")
        v, f = self.surf.extract()
        if len(f) == 0:
            raise OptimizationError(
                f"the DMTet surface vanished at step {step} (every SDF value has one "
                f"sign); lower sculpt.lr or raise the regularizer weights"
            )
        return v, f

    def fit_terms(self, raster: Any, mesh: tuple, step: int, cfg: ISDDMTetSculpt.Config) -> dict[str, Any]:
        """The normal-fit phase: the stage-2 mesh's normal map at a random view."""
        cam = random_view(self.rng, self.ranges, self.frame, cfg.render_size)
        out = render_geometry(raster, cam, *mesh)
        with torch.no_grad():
            want = render_geometry(raster, cam, self.init_v, self.init_f)["image"]
        return {"fit": cfg.w_fit(step) * F.mse_loss(out["image"], want)}

    def reference_terms(self, raster: Any, mesh: tuple, step: int, cfg: ISDDMTetSculpt.Config) -> dict[str, Any]:
        return reference_losses(render_geometry(raster, self.ref_cam, *mesh), self.targets, cfg, step)

    def loss(self, terms: dict[str, Any], mesh: tuple, step: int, cfg: ISDDMTetSculpt.Config) -> torch.Tensor:
        """This step's loss: its terms (``t`` is a record, not a loss) and the regularizers."""
        v, f = mesh
        loss = sum(x for k, x in terms.items() if k != "t")
        consistency, lap = mesh_regularizers((v - self.centre) / self.frame.metres_per_unit, f)
        loss = loss + cfg.w_normal_consistency(step) * consistency + cfg.w_laplacian(step) * self.lap_scale * lap
        terms["loss"] = loss
        return loss

    def update(self, terms: dict[str, Any], step: int, cfg: ISDDMTetSculpt.Config) -> None:
        self.opt.step()
        self.surf.constrain()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log = {"step": step, **{k: x.item() for k, x in terms.items()}}
            if not math.isfinite(log["loss"]):
                raise OptimizationError(
                    f"the sculpt loss is not finite by step {step} ({log}); lower sculpt.lr or the loss weights"
                )
            self.history.append(log)

    def finish(self, cfg: ISDDMTetSculpt.Config) -> SculptResult:
        self.report(1.0, "extracting the surface")
        with torch.no_grad():
            v, f = self.surf.extract()
        vn, fn = largest_component(v.cpu().numpy().astype(np.float32), f.cpu().numpy().astype(np.int64))
        extracted = len(fn)
        if cfg.max_faces and len(fn) > cfg.max_faces:
            vn, fn = decimate(vn, fn, cfg.max_faces)
        mirror, fw = transfer_attributes(vn, self.initial)
        info = {
            "first": self.history[0] if self.history else {},
            "last": self.history[-1] if self.history else {},
            "losses": self.history,
            "grid_vertices": int(len(self.surf.grid)),
            "grid_tets": int(len(self.surf.tets)),
            "extracted_faces": extracted,
            "faces": int(len(fn)),
        }
        return SculptResult(mesh=HeadMesh(vertices=vn, faces=fn, mirror=mirror, face_weight=fw), info=info)
