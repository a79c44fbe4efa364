"""Stages 3-4 of the ``paper`` profile: ID-aware geometry supervision and geometry sculpting with ISD
on DMTet.

1. ID-aware reference maps (stage 3): the normal- and depth-adapted SD1.5 models, conditioned on the
   portrait's canny edges (canny ControlNet) and the person's ArcFace embedding (IP-Adapter FaceID),
   sample a normal map and a depth map of the reference view.
2. DMTet (stage 4): a narrow-band tetrahedral grid around the stage-2 mesh, its SDF initialised from
   that mesh, SDF values and vertex offsets optimised with Adam:
   - normal fitting: for the first steps, normal maps at random views match the stage-2 mesh's;
   - then reference-view losses (mask, normal, depth by negative Pearson) alternate with ISD (the
     normal-adapted model with the landmark ControlNet and the ID adapter) at random cameras;
   - normal consistency and Laplacian regularizers on the extracted mesh throughout.

Camera ranges follow the settings' ratios to the reference camera (distance 3.5-4.5 against 3.8,
fovy 25-45 against 28), since our reference camera is the one estimated from the photo. Losses are
read back from the device only every ``log_every`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, OptimizationError
from .camera import Camera
from .dmtet import DMTetSurface
from .guidance import IDGuidance, ISDSettings, id_embeds
from .image_io import mask_coverage
from .losses import mesh_regularizers, negative_pearson
from .mesh import decimate, largest_component, transfer_attributes
from .registry import register
from .render import get_rasterizer
from .render.maps import normal_from_image, render_geometry
from .schedule import Schedule
from .settings import DiffusionStageSettings, setting
from .stage import Reporter
from .types import HeadMesh, PortraitAnalysis, SculptInput, SculptResult

# Shares of the stage's progress: reference maps, then the grid, then the optimization.
_MAPS, _GRID = 0.05, 0.1


def random_camera(ref: Camera, rng: np.random.Generator, cfg: ISDDMTetSculpt.Config, size: int) -> Camera:
    """A camera of the settings' ranges around the head centre, scaled to the reference camera."""
    elev = rng.uniform(*cfg.elevation_range)
    azim = rng.uniform(*cfg.azimuth_range)
    dist = float(np.linalg.norm(ref.center)) * rng.uniform(*cfg.distance_range) / cfg.reference_distance
    fovy = ref.fovy_deg * rng.uniform(*cfg.fovy_range) / cfg.reference_fovy
    return Camera.orbit(azim, elev, dist, fovy, size)


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
        elevation_range: tuple[float, float] = setting((-15.0, 45.0), "random camera elevation, degrees", ge=-90, le=90)
        azimuth_range: tuple[float, float] = setting((-180.0, 180.0), "random camera azimuth, degrees", ge=-360, le=360)
        distance_range: tuple[float, float] = setting(
            (3.5, 4.5), "random camera distance, in the settings' units", gt=0
        )
        fovy_range: tuple[float, float] = setting(
            (25.0, 45.0), "random camera fovy, degrees in the settings", gt=0, lt=180
        )
        reference_distance: float = setting(3.8, "the settings' reference-camera distance (maps to ours)", gt=0)
        reference_fovy: float = setting(28.0, "the settings' reference-camera fovy (maps to ours)", gt=0, lt=180)
        reference_maps: bool = setting(True, "sample ID-aware reference normal/depth maps (stage 3)")
        reference_steps: int = setting(30, "sampling steps of each reference map", ge=1, le=1000)
        reference_guidance: float = setting(7.5, "CFG scale of the reference maps", ge=0)
        canny_scale: float = setting(1.0, "canny ControlNet scale of the reference maps", ge=0)
        w_sd: Schedule = setting(Schedule.parse(1.0), "ISD loss weight", ge=0)
        w_fit: Schedule = setting(Schedule.parse(1e4), "normal-fit loss weight (normal-fit phase)", ge=0)
        w_mask: Schedule = setting(Schedule.parse(100.0), "reference mask MSE weight", ge=0)
        w_depth: Schedule = setting(Schedule.parse(100.0), "reference depth negative-Pearson weight", ge=0)
        w_normal: Schedule = setting(Schedule.parse(1e4), "reference normal MSE weight", ge=0)
        w_normal_consistency: Schedule = setting(Schedule.parse(1e3), "normal consistency weight", ge=0)
        w_laplacian: Schedule = setting(Schedule.parse(1e4), "Laplacian smoothness weight (grid units^2)", ge=0)

        def validate(self) -> None:
            if self.normal_fit_steps > self.steps:
                raise ConfigError("sculpt.normal_fit_steps must lie in [0, steps]")
            if self.render_size % 8:
                raise ConfigError("sculpt.render_size must be a multiple of 8 (the VAE's factor)")
            for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
                lo, hi = getattr(self, name)
                if lo > hi:
                    raise ConfigError(f"sculpt.{name} must be [low, high], got [{lo}, {hi}]")

    def __init__(self, cfg: ISDDMTetSculpt.Config) -> None:
        from .models import ModelRoot
        from .models.diffusion import load_controlnet_pipeline, resolve_device, with_controlnet

        if not cfg.models:
            raise ConfigError("the isd_dmtet sculpt stage needs a model root: --models ROOT")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = torch.float16 if cfg.half else torch.float32
        root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        kw = dict(id_scale=cfg.id_scale, dtype=dtype, device=self.device)
        # One UNet per base; the canny and landmark ControlNets share it.
        self.normal_ref = load_controlnet_pipeline(root, "geometry_normal", ("controlnet_canny",), **kw)
        self.depth_ref = (
            load_controlnet_pipeline(root, "geometry_depth", ("controlnet_canny",), **kw)
            if cfg.reference_maps
            else None
        )
        isd_pipe = with_controlnet(self.normal_ref, root, "controlnet_landmarks")
        self.isd = IDGuidance(
            isd_pipe,
            ISDSettings(
                guidance_scale=cfg.guidance_scale, t_min=cfg.t_min, t_max=cfg.t_max, control_scale=cfg.landmark_scale
            ),
        )
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
        canny = Image.fromarray(np.repeat((mask_coverage(a.canny > 0, S) > 0)[..., None], 3, -1).astype(np.uint8) * 255)
        out = {}
        for k, (name, pipe) in enumerate((("normal", self.normal_ref), ("depth", self.depth_ref))):
            ids = id_embeds(a.identity, self.device, pipe.unet.dtype)
            text = cfg.prompt.replace("{caption}", a.caption) + cfg.prompt_suffix.replace("normal map", f"{name} map")
            img = pipe(
                prompt=text,
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
        cfg, dev, S = self.cfg, self.device, self.cfg.render_size
        a, head = inputs.analysis, inputs.initial
        if a.identity.shape[-1] != 512:
            raise ConfigError(
                f"ISD needs a 512-D ArcFace identity; the analysis gave {a.identity_model} "
                f"({a.identity.shape[-1]}-D): use analysis.identity=arcface"
            )
        # Seeded from the global generators, which the pipeline seeds per stage from the config.
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        rng = np.random.default_rng(int(np.random.randint(2**31)))
        ref_cam = a.camera.resized(S)
        mask = torch.from_numpy(mask_coverage(a.head_mask, S))[..., None].to(dev)
        if cfg.reference_maps:
            report(0.0, "ID-aware reference maps")
            refs = self.reference_maps(a, gen, report.span(0.0, _MAPS))
            ref_normal = torch.from_numpy(refs["normal"]).to(dev)
            ref_depth = torch.from_numpy(refs["depth"]).float().to(dev)
        else:
            ref_normal = ref_depth = None
        report(_MAPS, "DMTet grid")
        surf = DMTetSurface.from_mesh(
            head.vertices, head.faces, cfg.grid_resolution, cfg.band, cfg.grid_margin, cfg.deform_scale, dev
        )
        opt = torch.optim.Adam(surf.parameters(), lr=cfg.lr)
        init_v = torch.tensor(head.vertices, device=dev)
        init_f = torch.tensor(head.faces, device=dev)
        cond_text = cfg.prompt.replace("{caption}", a.caption) + cfg.prompt_suffix
        history = []
        steps = report.span(_GRID, 0.95)

        for step in range(cfg.steps):
            steps(step / cfg.steps, f"step {step + 1}/{cfg.steps}")
            v, f = surf.extract()
            if len(f) == 0:
                raise OptimizationError(
                    f"the DMTet surface vanished at step {step} (every SDF value has one "
                    f"sign); lower sculpt.lr or raise the regularizer weights"
                )
            terms: dict[str, Any] = {}  # this step's losses, as tensors
            if step < cfg.normal_fit_steps:
                cam = random_camera(ref_cam, rng, cfg, S)
                out = render_geometry(self.raster, cam, v, f)
                with torch.no_grad():
                    want = render_geometry(self.raster, cam, init_v, init_f)["image"]
                loss = terms["fit"] = cfg.w_fit(step) * F.mse_loss(out["image"], want)
            elif (step - cfg.normal_fit_steps) % 2 == 0:
                out = render_geometry(self.raster, ref_cam, v, f)
                loss = terms["mask"] = cfg.w_mask(step) * F.mse_loss(out["silhouette"], mask)
                both = out["mask"] & (mask[..., 0] > 0.5)
                if ref_normal is not None and both.sum() > 16:  # boolean masks below read the device anyway
                    terms["normal"] = cfg.w_normal(step) * F.mse_loss(out["normal"][both], ref_normal[both])
                    terms["depth"] = cfg.w_depth(step) * negative_pearson(-out["depth"][both], ref_depth[both])
                    loss = loss + terms["normal"] + terms["depth"]
            else:
                cam = random_camera(ref_cam, rng, cfg, S)
                out = render_geometry(self.raster, cam, v, f)
                cond = self.isd.condition(cond_text, a.identity, a.landmarks_3d, [cam])
                l_sd, info = self.isd(out["image"][None], cond, step, gen)
                loss = terms["sd"] = cfg.w_sd(step) * l_sd
                terms["t"] = info["t"][0]
            consistency, lap = mesh_regularizers(surf.to_unit(v), f)
            loss = loss + cfg.w_normal_consistency(step) * consistency + cfg.w_laplacian(step) * lap
            opt.zero_grad()
            loss.backward()
            opt.step()
            surf.constrain()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log = {"step": step, **{k: x.item() for k, x in terms.items()}, "loss": loss.item()}
                if not math.isfinite(log["loss"]):
                    raise OptimizationError(
                        f"the sculpt loss is not finite by step {step} ({log}); lower sculpt.lr or the loss weights"
                    )
                history.append(log)

        report(0.95, "extracting the surface")
        with torch.no_grad():
            v, f = surf.extract()
        vn, fn = largest_component(v.cpu().numpy().astype(np.float32), f.cpu().numpy().astype(np.int64))
        extracted = len(fn)
        if cfg.max_faces and len(fn) > cfg.max_faces:
            report(0.97, "decimating")
            vn, fn = decimate(vn, fn, cfg.max_faces)
        mirror, fw = transfer_attributes(vn, head)
        out_mesh = HeadMesh(vertices=vn, faces=fn, mirror=mirror, face_weight=fw)
        info = {
            "first": history[0] if history else {},
            "last": history[-1] if history else {},
            "losses": history,
            "grid_vertices": int(len(surf.grid)),
            "grid_tets": int(len(surf.tets)),
            "extracted_faces": extracted,
            "faces": int(len(fn)),
        }
        return SculptResult(mesh=out_mesh, info=info)
