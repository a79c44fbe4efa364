"""Stage 5 of the ``paper`` profile: identity-consistent texture inpainting and refinement.

Geometry is frozen. After the UV atlas and the photo's projection (``texturing``, as in ``classical``):

1. Progressive inpainting over the 15 views of the settings: each view renders what the UV map
   holds, and the texture base model with the normal ControlNet (the view's normal map) and the ID
   adapter inpaints the pixels nothing has coloured yet (from t = 950: ``strength``), in
   ``inpaint_steps`` DDIM steps. The new pixels go into the UV map only where it is still empty.
   Then, as the release does, the map is dilated (each texel near the coloured ones takes the
   nearest one's colour) and, where the root has a ``super_resolution`` role, "deblurred": shrunk
   by 2 and super-resolved back.
2. Refinement, as the release alternates it: the UV map becomes a parameter (in logit space, AdamW).
   Even steps render a random view (the release's ranges in its normalised frame), re-noise its
   latent at t in [t_min, t_max), denoise it in ``refine_denoise_steps`` DDIM steps with the
   ID-guided model (CFG ``refine_guidance``, the timesteps spaced over [0, t) as the release spaces
   them) and fit the render to that image: ``0.5 * sum`` L2 + perceptual (the distance of VAE-encoder
   latents: no LPIPS network ships here). Odd steps fit the render at the reference view to the photo
   (L1 on the head mask) with total variation of that render. Losses are read back from the device
   every ``log_every`` steps.

Both inpainting and refinement prompts carry the view's direction (front / side / back view), as the
release's threestudio prompt processor gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError
from .camera import Camera
from .guidance import Condition, IDGuidance, ISDSettings, id_embeds
from .image_io import mask_coverage
from .losses import squared_total_variation
from .random_views import SHAPE_INIT_EXTENT, ViewRanges, random_view, release_frame, view_angles
from .registry import register
from .render import get_rasterizer
from .render.maps import bae_normal_image, render_geometry, sample_texture
from .settings import DiffusionStageSettings, setting
from .stage import Reporter
from .texturing import (
    NONE,
    PHOTO,
    VIEWS,
    Atlas,
    build_atlas,
    coverage_stats,
    depth_map,
    fill_atlas,
    project_photo,
    sample_bilinear,
    splat_known,
    trajectory_cameras,
    visible_texels,
)
from .types import HeadMesh, PortraitAnalysis, TexturedHead, TextureInput
from .uv_unwrap import UVUnwrapper

# Shares of the stage's progress: atlas and photo, inpainting, refinement.
_ATLAS, _INPAINT = 0.1, 0.6


@register("texture", "diffusion")
class DiffusionTexture:
    @dataclass(frozen=True)
    class Config(DiffusionStageSettings):
        texture_size: int = setting(1024, "UV map side, texels", ge=64, le=8192)
        atlas_padding: int = setting(
            2, "texels between UV charts (marching-tetrahedra meshes have many charts)", ge=0, le=64
        )
        view_size: int = setting(512, "render side of each inpainting and refinement view", ge=16, le=2048)
        min_facing: float = setting(0.4, "cos(normal, view) below which the photo is not projected", ge=-1, le=1)
        view_min_facing: float = setting(0.2, "the same for inpainting views", ge=-1, le=1)
        mask_erode: int = setting(3, "head-mask erosion before projecting the photo, crop pixels", ge=0, le=100)
        prompt: str = setting(
            "a DSLR photo of the head of {caption}, realistic, detailed skin and hair",
            "text condition; {caption} is the portrait's caption",
        )
        negative_prompt: str = setting("blurry, lowres, cartoon, deformed", "text of the unconditional branch")
        inpaint_steps: int = setting(20, "DDIM steps per inpainted view", ge=1, le=1000)
        inpaint_strength: float = setting(0.95, "noise level inpainting starts from (0.95: t = 950)", gt=0, le=1)
        inpaint_guidance: float = setting(7.5, "CFG scale of inpainting", ge=0)
        hole_dilate: int = setting(2, "grow each view's hole mask by this many pixels", ge=0, le=64)
        dilate: float = setting(
            0.2, "after inpainting, grow the coloured texels this far, as a share of the UV map's side", ge=0, le=1
        )
        deblur: str = setting(
            "auto",
            "after inpainting, shrink the UV map by 2 and super-resolve it back with the root's super_resolution "
            "role: 'auto' (when the root has it), 'model' (required), 'none'",
            choices=("auto", "model", "none"),
        )
        normal_scale: float = setting(1.0, "normal ControlNet scale", ge=0)
        id_scale: float = setting(1.0, "IP-Adapter FaceID scale", ge=0)
        back_threshold: float = setting(
            45.0, "azimuth from the back within which a view's prompt says 'back view', degrees", ge=0, le=180
        )
        refine_steps: int = setting(400, "refinement steps, alternating guided and reference (0: none)", ge=0)
        refine_t: tuple[int, int] = setting((50, 200), "re-noising range [lo, hi) in training steps", ge=0, le=1000)
        refine_denoise_steps: int = setting(20, "DDIM steps from t back to the clean image", ge=1, le=1000)
        refine_guidance: float = setting(10.0, "CFG scale of refinement", ge=0)
        refine_lr: float = setting(0.02, "AdamW learning rate of the UV map's logits", gt=0, le=10)
        refine_elevation_range: tuple[float, float] = setting(
            (-20.0, 45.0), "refinement camera elevation, degrees", ge=-90, le=90
        )
        refine_azimuth_range: tuple[float, float] = setting(
            (-180.0, 180.0), "refinement camera azimuth, degrees", ge=-360, le=360
        )
        refine_distance_range: tuple[float, float] = setting(
            (2.5, 3.5), "refinement camera distance in the release's normalised frame", gt=0
        )
        refine_fovy_range: tuple[float, float] = setting((30.0, 45.0), "refinement camera fovy, degrees", gt=0, lt=180)
        shape_extent: float = setting(
            SHAPE_INIT_EXTENT, "largest coordinate of the head in the normalised frame (shape_init_params)", gt=0
        )
        w_l2: float = setting(0.1, "refinement L2 weight (on 0.5 x the sum over the render's pixels)", ge=0)
        w_perceptual: float = setting(50.0, "refinement perceptual (VAE latent MSE) weight", ge=0)
        w_reference: float = setting(1000.0, "photo at the reference view, L1 weight (on the head mask)", ge=0)
        w_tv: float = setting(5e-4, "total variation (sum of squares) of the reference render, weight", ge=0)

        def validate(self) -> None:
            if self.view_size % 8:
                raise ConfigError("texture.view_size must be a multiple of 8 (the VAE's factor)")
            if not self.refine_t[0] < self.refine_t[1]:
                raise ConfigError("texture.refine_t must be [lo, hi) with lo < hi")
            for name in (
                "refine_elevation_range",
                "refine_azimuth_range",
                "refine_distance_range",
                "refine_fovy_range",
            ):
                lo, hi = getattr(self, name)
                if lo > hi:
                    raise ConfigError(f"texture.{name} must be [low, high], got [{lo}, {hi}]")

    def __init__(self, cfg: DiffusionTexture.Config) -> None:
        from .models import ModelRoot
        from .models.diffusion import load_controlnet_pipeline, resolve_device

        if not cfg.models:
            raise ConfigError("the diffusion texture stage needs a model root: --models ROOT")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        self.pipe = load_controlnet_pipeline(
            root,
            "texture_base",
            ("controlnet_normal",),
            inpaint=True,
            id_scale=cfg.id_scale,
            dtype=torch.float16 if cfg.half else torch.float32,
            device=self.device,
        )
        self.guide = IDGuidance(
            self.pipe,
            ISDSettings(
                guidance_scale=cfg.refine_guidance,
                control_scale=cfg.normal_scale,
                negative_prompt=cfg.negative_prompt,
                id_scale=cfg.id_scale,
                id_max_azimuth=360.0,  # the release's texture stage conditions every view on the identity
                back_threshold=cfg.back_threshold,
            ),
            autocast=cfg.autocast,
            compile=cfg.compile,
        )
        if cfg.compile != "none":
            self.guide.warm_up(1, cfg.view_size)
        self.sr = None
        if cfg.deblur == "model" or (cfg.deblur == "auto" and root.has("super_resolution")):
            from .models.rrdbnet import RRDBNet

            weights = root.file("super_resolution", (".safetensors", ".pth", ".pt", ".bin"))
            self.sr = RRDBNet.from_state_dict(root.load_weights("super_resolution", weights)).to(self.device)
        # Every render (the atlas, visibility and depth maps too) on the stage's device: nvdiffrast on CUDA.
        self.raster = self.view_raster = get_rasterizer(cfg.rasterizer, self.device)
        self.unwrapper = UVUnwrapper()

    def close(self) -> None:
        self.unwrapper.close()
        self.pipe = self.guide = self.sr = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _normal_image(self, cam: Camera, v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The normal ControlNet's input at ``cam``: ``(3, S, S)`` in [0, 1], BAE's convention."""
        with torch.no_grad():
            maps = render_geometry(self.view_raster, cam, v, f)
            return bae_normal_image(maps["normal"], maps["silhouette"])

    @torch.no_grad()
    def inpaint_view(
        self,
        image: np.ndarray,
        holes: np.ndarray,
        normal: torch.Tensor,
        identity: np.ndarray,
        prompt: str,
        generator: torch.Generator,
        report: Reporter | None = None,
    ) -> np.ndarray:
        """One view: ``image (S, S, 3)`` uint8 with ``holes (S, S)`` bool to fill, the view's normal map
        ``(3, S, S)`` -> the inpainted image ``(S, S, 3)`` float in [0, 255]."""
        from .models.diffusion import step_callback

        cfg, S = self.cfg, self.cfg.view_size
        ctrl = Image.fromarray((normal.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))
        with self.guide.amp():
            out = self.pipe(
                prompt=prompt,
                negative_prompt=cfg.negative_prompt,
                image=Image.fromarray(image),
                mask_image=Image.fromarray(holes.astype(np.uint8) * 255),
                control_image=ctrl,
                height=S,
                width=S,
                num_inference_steps=cfg.inpaint_steps,
                strength=cfg.inpaint_strength,
                guidance_scale=cfg.inpaint_guidance,
                controlnet_conditioning_scale=cfg.normal_scale,
                ip_adapter_image_embeds=[id_embeds(identity, self.device, self.pipe.unet.dtype)],
                generator=generator,
                output_type="np",
                callback_on_step_end=step_callback(report or Reporter("texture"), cfg.inpaint_steps),
            ).images[0]
        return np.clip(out, 0, 1) * 255

    def __call__(self, inputs: TextureInput, report: Reporter) -> TexturedHead:
        cfg, dev = self.cfg, self.device
        a, mesh = inputs.analysis, inputs.mesh
        if a.identity.shape[-1] != 512:
            raise ConfigError(
                f"the ID adapter needs a 512-D ArcFace identity; the analysis gave {a.identity_model}: "
                f"use analysis.identity=arcface"
            )
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        prompt = cfg.prompt.replace("{caption}", a.caption)
        report(0.0, "uv atlas")
        at = build_atlas(self.raster, self.unwrapper, mesh, cfg.texture_size, cfg.atlas_padding, report.check)
        report(0.05, "photo")
        colors = np.zeros((len(at.idx), 3), np.float32)
        known = np.zeros(len(at.idx), bool)
        source = np.full(len(at.idx), NONE, np.uint8)
        vis, _, _, _ = project_photo(self.raster, a, mesh, at, colors, cfg.min_facing, cfg.mask_erode)
        known |= vis
        source[vis] = PHOTO

        v = torch.tensor(mesh.vertices, dtype=torch.float32, device=dev)
        f = torch.tensor(mesh.faces, device=dev)
        views = trajectory_cameras(a.camera, cfg.view_size)
        normals = [self._normal_image(c, v, f) for c in views]  # the normal ControlNet's input, per view
        k = 2 * cfg.hole_dilate + 1
        for i, vcam in enumerate(views):
            view_report = report.span(
                _ATLAS + (_INPAINT - _ATLAS) * i / len(views), _ATLAS + (_INPAINT - _ATLAS) * (i + 1) / len(views)
            )
            view_report(0.0, f"inpainting view {i + 1}/{len(views)}")
            depth = depth_map(self.raster, mesh, vcam)
            sil = np.isfinite(depth)
            vpix, vvis, _ = visible_texels(at.pts, at.nrm, vcam, depth, cfg.view_min_facing)
            todo = vvis & ~known
            if not todo.any():
                continue
            img, have = splat_known(vpix[vvis & known], colors[vvis & known], vcam.width, sil)
            holes = sil & ~have
            if cfg.hole_dilate:
                holes = (cv2.dilate(holes.astype(np.uint8), np.ones((k, k), np.uint8)) > 0) & sil
            img[~sil] = 0
            view_text = self.guide.view_prompt(prompt, *view_angles(vcam))
            filled = self.inpaint_view(img, holes, normals[i], a.identity, view_text, gen, view_report)
            colors[todo] = sample_bilinear(filled, vpix[todo])
            known |= todo
            source[todo] = VIEWS

        tex = fill_atlas(cfg.texture_size, at.idx, colors, known, round(cfg.dilate * cfg.texture_size))
        stats = coverage_stats(source, known)
        if self.sr is not None:
            from .models.rrdbnet import deblur

            report(_INPAINT, "deblur (super-resolution)")
            t = torch.tensor(tex / 255.0, dtype=torch.float32, device=dev).permute(2, 0, 1)
            tex = deblur(t, self.sr).permute(1, 2, 0).cpu().numpy() * 255.0
        if cfg.refine_steps > 0:
            tex, refine = self.refine(a, mesh, at, tex, prompt, gen, report.span(_INPAINT, 1.0))
            stats.update(refine)
        texture = np.clip(tex + 0.5, 0, 255).astype(np.uint8)
        return TexturedHead(
            mesh=mesh, uv=at.uv, uv_faces=at.uv_faces, uv_to_vertex=at.uv_to_vertex, texture=texture, stats=stats
        )

    def refine(
        self,
        a: PortraitAnalysis,
        mesh: HeadMesh,
        at: Atlas,
        tex: np.ndarray,
        prompt: str,
        gen: torch.Generator,
        report: Reporter,
    ) -> tuple[np.ndarray, dict]:
        """Fit the UV map ``tex (T, T, 3)`` float in [0, 255] of ``mesh``: even steps to denoised renders
        of itself at random views, odd steps to the photo at the reference view."""
        cfg, dev, S = self.cfg, self.device, self.cfg.view_size
        v = torch.tensor(mesh.vertices, dtype=torch.float32, device=dev)
        f = torch.tensor(mesh.faces, device=dev)
        uv = torch.tensor(at.uv, device=dev)
        uvf = torch.tensor(at.uv_faces, device=dev)
        start = torch.tensor(tex / 255.0, dtype=torch.float32, device=dev).permute(2, 0, 1)
        logits = torch.logit(start.clamp(1e-6, 1 - 1e-6)).contiguous().requires_grad_(True)
        opt = torch.optim.AdamW([logits], lr=cfg.refine_lr, betas=(0.9, 0.99), eps=1e-4)
        frame = release_frame(mesh.vertices, cfg.shape_extent)
        ranges = ViewRanges(
            cfg.refine_elevation_range, cfg.refine_azimuth_range, cfg.refine_distance_range, cfg.refine_fovy_range
        )
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        ref_cam = a.camera.resized(S)
        crop = cv2.resize(a.crop, (S, S), interpolation=cv2.INTER_AREA)
        photo = torch.tensor(crop / 255.0, dtype=torch.float32, device=dev).permute(2, 0, 1)
        head = torch.from_numpy(mask_coverage(a.head_mask, S) > 0.5).to(dev)
        history = []
        for step in range(cfg.refine_steps):
            report(step / cfg.refine_steps, f"refining {step + 1}/{cfg.refine_steps}")
            texture = torch.sigmoid(logits)
            if step % 2 == 0:
                cam = random_view(rng, ranges, frame, S)
                img, m = sample_texture(self.view_raster, cam, v, f, uv, uvf, texture)
                z_img = self.guide.encode(img[None])  # once: noised below, and the perceptual loss's input
                with torch.no_grad():
                    cond = self.guide.condition_with(
                        prompt, a.identity, self._normal_image(cam, v, f)[None], [cam], frame.centre
                    )
                    t = int(torch.randint(cfg.refine_t[0], cfg.refine_t[1], (1,), generator=gen))
                    target = self.denoised_target(z_img.detach(), t, cond, gen) * m
                    z_target = self.guide.encode(target[None])
                terms = refinement_losses(img, target, z_img, z_target)
                loss = cfg.w_l2 * terms["l2"] + cfg.w_perceptual * terms["perceptual"]
            else:
                ref, _ = sample_texture(self.view_raster, ref_cam, v, f, uv, uvf, texture)
                terms = reference_losses(ref, photo, head)
                loss = cfg.w_reference * terms["reference"] + cfg.w_tv * terms["tv"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % cfg.log_every < 2 or step >= cfg.refine_steps - 2:
                history.append({"step": step, "loss": loss.item(), **{k: x.item() for k, x in terms.items()}})
        out = torch.sigmoid(logits).detach().permute(1, 2, 0).cpu().numpy() * 255.0
        return out, {"refine_first": history[0], "refine_last": history[-1], "refine_losses": history}

    @torch.no_grad()
    def denoised_target(self, z: torch.Tensor, t: int, cond: Condition, gen: torch.Generator) -> torch.Tensor:
        """The refinement target of latents ``z (1, 4, h, w)``: noised to ``t``, denoised by DDIM, decoded:
        ``(3, S, S)`` in [0, 1]."""
        noise = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        z_t = self.pipe.scheduler.add_noise(z, noise, torch.tensor([t], device=z.device))
        z0 = release_ddim(self.guide, z_t, t, cond, self.cfg.refine_guidance, self.cfg.refine_denoise_steps)
        img = self.pipe.vae.decode(z0 / self.pipe.vae.config.scaling_factor).sample[0] * 0.5 + 0.5
        return img.clamp(0, 1).float()


def refinement_losses(
    img: torch.Tensor, target: torch.Tensor, z_img: torch.Tensor, z_target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The guided refinement step's losses of a render ``img (3, S, S)`` against its denoised ``target``:
    the release's ``0.5 * sum`` of squared differences, and the MSE of their VAE latents."""
    return {"l2": 0.5 * F.mse_loss(img, target, reduction="sum"), "perceptual": F.mse_loss(z_img, z_target)}


def reference_losses(ref: torch.Tensor, photo: torch.Tensor, head: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference step's losses of the render ``ref (3, S, S)`` at the reference camera: the release's
    L1 to the photo ``(3, S, S)``, both masked by the head ``(S, S)`` (mean over every pixel), and the
    total variation of the render."""
    m = head.to(ref.dtype)
    return {"reference": F.l1_loss(ref * m, photo * m), "tv": squared_total_variation(ref)}


def release_timesteps(t: int, steps: int, offset: int = 1) -> list[int]:
    """The DDIM timesteps of the release's refinement: its scheduler re-spaced as if it were trained on
    ``t`` steps, ``steps`` of them "leading" from ``offset`` (SD1.5's ``steps_offset``), descending."""
    ratio = max(t // steps, 1)
    return [k * ratio + offset for k in reversed(range(steps))]


@torch.no_grad()
def release_ddim(
    guide: IDGuidance, z_t: torch.Tensor, t: int, cond: Condition, scale: float, steps: int
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from ``z_t`` (noised at ``t``) over :func:`release_timesteps`, each
    step to ``timestep - t // steps`` (the last one to the schedule's first noise level)."""
    alphas = guide.alphas
    ratio = max(t // steps, 1)
    z = z_t
    for ts in release_timesteps(t, steps, int(guide.pipe.scheduler.config.get("steps_offset", 0))):
        eps = guide.predict_noise(z, torch.tensor([ts], device=z.device), cond, scale)
        a_t = alphas[ts].to(z.dtype)
        a_prev = alphas[ts - ratio].to(z.dtype) if ts - ratio >= 0 else alphas[0].to(z.dtype)
        z0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        z = a_prev.sqrt() * z0 + (1 - a_prev).sqrt() * eps
    return z
