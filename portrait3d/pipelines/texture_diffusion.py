"""Stage 5 of the ``paper`` profile: identity-consistent texture inpainting and refinement.

Geometry is frozen. After the UV atlas and the photo's projection (``texturing``, as in ``classical``):

1. Progressive inpainting over the 15 views of the settings: each view renders what the UV map
   holds, and the texture base model with the normal ControlNet (the view's normal map) and the ID
   adapter inpaints the pixels nothing has coloured yet (from t = 950: ``strength``), in
   ``inpaint_steps`` DDIM steps. The new pixels go into the UV map only where it is still empty.
2. Refinement: the UV map becomes a parameter. Each step renders a view, re-noises its latent at
   t in [t_min, t_max), denoises it with the ID-guided model (CFG ``refine_guidance``), and fits the
   UV map to that image: L2 + perceptual (distance of VAE-encoder latents) + the photo at the
   reference view + total variation. Losses are read back from the device every ``log_every`` steps.
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
from .losses import total_variation
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
from .types import PortraitAnalysis, TexturedHead, TextureInput
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
        normal_scale: float = setting(1.0, "normal ControlNet scale", ge=0)
        id_scale: float = setting(1.0, "IP-Adapter FaceID scale", ge=0)
        refine_steps: int = setting(400, "refinement steps (0: none)", ge=0, le=1_000_000)
        refine_t: tuple[int, int] = setting((50, 200), "re-noising range [lo, hi) in training steps", ge=0, le=1000)
        refine_denoise_steps: int = setting(1, "DDIM steps from t back to 0 (1: one-step estimate)", ge=1, le=1000)
        refine_guidance: float = setting(10.0, "CFG scale of refinement", ge=0)
        refine_lr: float = setting(0.01, "Adam learning rate of the UV map (colour in [0, 1])", gt=0, le=1)
        w_l2: float = setting(0.1, "refinement L2 weight", ge=0)
        w_perceptual: float = setting(50.0, "refinement perceptual (VAE latent) weight", ge=0)
        w_reference: float = setting(1000.0, "photo at the reference view, L2 weight", ge=0)
        w_tv: float = setting(5e-4, "UV-map total variation weight", ge=0)

        def validate(self) -> None:
            if self.view_size % 8:
                raise ConfigError("texture.view_size must be a multiple of 8 (the VAE's factor)")
            if not self.refine_t[0] < self.refine_t[1]:
                raise ConfigError("texture.refine_t must be [lo, hi) with lo < hi")

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
                guidance_scale=cfg.refine_guidance, control_scale=cfg.normal_scale, negative_prompt=cfg.negative_prompt
            ),
        )
        self.raster = get_rasterizer("torch")  # the atlas and visibility work on CPU arrays
        self.view_raster = get_rasterizer(cfg.rasterizer, self.device)
        self.unwrapper = UVUnwrapper()

    def close(self) -> None:
        self.unwrapper.close()
        self.pipe = self.guide = None
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
            filled = self.inpaint_view(img, holes, normals[i], a.identity, prompt, gen, view_report)
            colors[todo] = sample_bilinear(filled, vpix[todo])
            known |= todo
            source[todo] = VIEWS

        tex = fill_atlas(cfg.texture_size, at.idx, colors, known)
        stats = coverage_stats(source, known)
        if cfg.refine_steps > 0:
            tex, refine = self.refine(a, v, f, at, tex, views, normals, prompt, gen, report.span(_INPAINT, 1.0))
            stats.update(refine)
        texture = np.clip(tex + 0.5, 0, 255).astype(np.uint8)
        return TexturedHead(
            mesh=mesh, uv=at.uv, uv_faces=at.uv_faces, uv_to_vertex=at.uv_to_vertex, texture=texture, stats=stats
        )

    def refine(
        self,
        a: PortraitAnalysis,
        v: torch.Tensor,
        f: torch.Tensor,
        at: Atlas,
        tex: np.ndarray,
        views: list[Camera],
        normals: list[torch.Tensor],
        prompt: str,
        gen: torch.Generator,
        report: Reporter,
    ) -> tuple[np.ndarray, dict]:
        """Fit the UV map ``tex (T, T, 3)`` float in [0, 255] of the mesh ``v (V, 3)``, ``f (F, 3)`` to
        denoised renders of itself at ``views`` (with their normal maps ``(3, S, S)``)."""
        cfg, dev, S = self.cfg, self.device, self.cfg.view_size
        uv = torch.tensor(at.uv, device=dev)
        uvf = torch.tensor(at.uv_faces, device=dev)
        texture = torch.tensor(tex / 255.0, dtype=torch.float32, device=dev).permute(2, 0, 1).contiguous()
        texture.requires_grad_(True)
        opt = torch.optim.Adam([texture], lr=cfg.refine_lr)
        ref_cam = a.camera.resized(S)
        crop = cv2.resize(a.crop, (S, S), interpolation=cv2.INTER_AREA)
        photo = torch.tensor(crop / 255.0, dtype=torch.float32, device=dev).permute(2, 0, 1)
        # The texels of the photo's head region, as indices: a boolean mask would wait for the device each step.
        photo_at = torch.from_numpy(np.flatnonzero(mask_coverage(a.head_mask, S) > 0.99)).to(dev)
        photo = photo.reshape(3, -1)[:, photo_at]
        scheduler = self.pipe.scheduler
        alphas = self.guide.alphas
        history = []
        for step in range(cfg.refine_steps):
            report(step / cfg.refine_steps, f"refining {step + 1}/{cfg.refine_steps}")
            j = step % len(views)
            img, m = sample_texture(self.view_raster, views[j], v, f, uv, uvf, texture)
            z_img = self.guide.encode(img[None])  # once: noised below, and the perceptual loss's input
            with torch.no_grad():
                cond = self.guide.condition_with(prompt, a.identity, normals[j][None])
                z = z_img.detach()
                t = int(torch.randint(cfg.refine_t[0], cfg.refine_t[1], (1,), generator=gen))
                noise = torch.randn(z.shape, generator=gen).to(dev, z.dtype)
                z_t = scheduler.add_noise(z, noise, torch.tensor([t], device=dev))
                z0 = _ddim_to_zero(self.guide, z_t, t, cond, cfg.refine_guidance, cfg.refine_denoise_steps, alphas)
                target = self.pipe.vae.decode(z0 / self.pipe.vae.config.scaling_factor).sample[0] * 0.5 + 0.5
                target = target.clamp(0, 1).float() * m
                z_target = self.guide.encode(target[None])
            loss_l2 = F.mse_loss(img, target)
            loss_p = F.mse_loss(z_img, z_target)
            ref, _ = sample_texture(self.view_raster, ref_cam, v, f, uv, uvf, texture)
            loss_ref = F.mse_loss(ref.reshape(3, -1)[:, photo_at], photo) if len(photo_at) else ref.sum() * 0
            loss = (
                cfg.w_l2 * loss_l2
                + cfg.w_perceptual * loss_p
                + cfg.w_reference * loss_ref
                + cfg.w_tv * total_variation(texture)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                texture.clamp_(0, 1)
            if step % cfg.log_every == 0 or step == cfg.refine_steps - 1:
                history.append(
                    {
                        "step": step,
                        "loss": loss.item(),
                        "l2": loss_l2.item(),
                        "perceptual": loss_p.item(),
                        "reference": loss_ref.item(),
                    }
                )
        out = texture.detach().permute(1, 2, 0).cpu().numpy() * 255.0
        return out, {"refine_first": history[0], "refine_last": history[-1], "refine_losses": history}


@torch.no_grad()
def _ddim_to_zero(
    guide: IDGuidance, z_t: torch.Tensor, t: int, cond: Condition, scale: float, steps: int, alphas: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM from ``z_t`` at step ``t`` to a clean latent in ``steps`` steps."""
    ts = np.linspace(t, 0, steps + 1).round().astype(int)
    z = z_t
    for a_t, b_t in zip(ts[:-1], ts[1:], strict=True):
        tt = torch.tensor([int(a_t)], device=z.device)
        eps = guide.predict_noise(z, tt, cond, scale)
        ab = alphas[int(a_t)].to(z.dtype)
        z0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
        if b_t == 0:
            return z0
        ab_next = alphas[int(b_t)].to(z.dtype)
        z = ab_next.sqrt() * z0 + (1 - ab_next).sqrt() * eps
    return z
