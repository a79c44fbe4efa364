"""Stage 5 of the ``paper`` profile: identity-consistent texture inpainting and refinement.

Geometry is frozen. After the UV atlas and the photo's projection (as in ``classical``):

1. Progressive inpainting over the 15 views of the settings: each view renders what the UV map
   holds, and the texture base model with the normal ControlNet (the view's normal map) and the ID
   adapter inpaints the pixels nothing has coloured yet (from t = 950: ``strength``), in
   ``inpaint_steps`` DDIM steps. The new pixels go into the UV map only where it is still empty.
2. Refinement: the UV map becomes a parameter. Each step renders a view, re-noises its latent at
   t in [t_min, t_max), denoises it with the ID-guided model (CFG ``refine_guidance``), and fits the
   UV map to that image: L2 + perceptual (distance of VAE-encoder latents) + the photo at the
   reference view + total variation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError
from .camera import Camera
from .config import register
from .guidance import Condition, DiffusionStageSettings, IDGuidance, ISDSettings, id_embeds
from .image_io import mask_coverage
from .render import get_rasterizer
from .sculpt_isd import render_geometry
from .texture import PAPER_TRAJECTORY, ClassicalTexture
from .types import HeadMesh, PortraitAnalysis, TexturedHead

Progress = Callable[[float, str], None]


def sample_texture(
    raster,
    cam: Camera,
    v: torch.Tensor,
    f: torch.Tensor,
    uv: torch.Tensor,
    uv_faces: torch.Tensor,
    texture: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render a UV-textured mesh: ``texture (3, T, T)`` (row 0 at v = 1) -> image ``(3, H, W)``
    (black background; differentiable w.r.t. the texture) and mask ``(H, W)``."""
    rast = raster.rasterize(cam.clip(v.double()).float(), f, (cam.height, cam.width))
    st = raster.interpolate(uv, rast, uv_faces)
    grid = torch.stack([st[..., 0] * 2 - 1, 1 - st[..., 1] * 2], -1)[None]
    img = F.grid_sample(texture[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return img * rast.mask, rast.mask


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring texels of ``t (C, H, W)``."""
    return (t[:, 1:] - t[:, :-1]).abs().mean() + (t[:, :, 1:] - t[:, :, :-1]).abs().mean()


@register("texture", "diffusion")
class DiffusionTexture(ClassicalTexture):
    @dataclass
    class Config(DiffusionStageSettings):
        texture_size: int = field(default=1024, metadata={"help": "UV map side, texels"})
        atlas_padding: int = field(
            default=2, metadata={"help": "texels between UV charts (marching-tetrahedra meshes have many charts)"}
        )
        view_size: int = field(default=512, metadata={"help": "render side of each inpainting and refinement view"})
        min_facing: float = field(
            default=0.4, metadata={"help": "cos(normal, view) below which the photo is not projected"}
        )
        view_min_facing: float = field(default=0.2, metadata={"help": "the same for inpainting views"})
        mask_erode: int = field(
            default=3, metadata={"help": "head-mask erosion before projecting the photo, crop pixels"}
        )
        prompt: str = field(
            default="a DSLR photo of the head of {caption}, realistic, detailed skin and hair",
            metadata={"help": "text condition; {caption} is the portrait's caption"},
        )
        negative_prompt: str = field(
            default="blurry, lowres, cartoon, deformed", metadata={"help": "text of the unconditional branch"}
        )
        inpaint_steps: int = field(default=20, metadata={"help": "DDIM steps per inpainted view"})
        inpaint_strength: float = field(
            default=0.95, metadata={"help": "noise level inpainting starts from (0.95: t = 950)"}
        )
        inpaint_guidance: float = field(default=7.5, metadata={"help": "CFG scale of inpainting"})
        hole_dilate: int = field(default=2, metadata={"help": "grow each view's hole mask by this many pixels"})
        normal_scale: float = field(default=1.0, metadata={"help": "normal ControlNet scale"})
        id_scale: float = field(default=1.0, metadata={"help": "IP-Adapter FaceID scale"})
        refine_steps: int = field(default=400, metadata={"help": "refinement steps (0: none)"})
        refine_t: tuple[int, int] = field(
            default=(50, 200), metadata={"help": "re-noising range [lo, hi) in training steps"}
        )
        refine_denoise_steps: int = field(
            default=1, metadata={"help": "DDIM steps from t back to 0 (1: one-step estimate)"}
        )
        refine_guidance: float = field(default=10.0, metadata={"help": "CFG scale of refinement"})
        refine_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the UV map (colour in [0, 1])"})
        w_l2: float = field(default=0.1, metadata={"help": "refinement L2 weight"})
        w_perceptual: float = field(default=50.0, metadata={"help": "refinement perceptual (VAE latent) weight"})
        w_reference: float = field(default=1000.0, metadata={"help": "photo at the reference view, L2 weight"})
        w_tv: float = field(default=5e-4, metadata={"help": "UV-map total variation weight"})

        def validate(self) -> None:
            if self.view_size % 8:
                raise ConfigError("texture.view_size must be a multiple of 8 (the VAE's factor)")
            if not 0 < self.inpaint_strength <= 1:
                raise ConfigError("texture.inpaint_strength must lie in (0, 1]")
            if not 0 <= self.refine_t[0] < self.refine_t[1] <= 1000:
                raise ConfigError("texture.refine_t must be [lo, hi) within [0, 1000]")

    def __init__(self, cfg: "DiffusionTexture.Config"):
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
        self.raster = get_rasterizer("torch")  # the atlas and visibility helpers work on CPU arrays
        self.view_raster = get_rasterizer(cfg.rasterizer, self.device)

    def _views(self, a: PortraitAnalysis) -> list[Camera]:
        dist = float(np.linalg.norm(a.camera.center))
        return [Camera.orbit(az, el, dist, a.camera.fovy_deg * 1.1, self.cfg.view_size) for el, az in PAPER_TRAJECTORY]

    def _normal_image(self, cam: Camera, v: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return render_geometry(self.view_raster, cam, v, f)["image"]

    @torch.no_grad()
    def inpaint_view(
        self,
        image: np.ndarray,
        holes: np.ndarray,
        normal: torch.Tensor,
        identity: np.ndarray,
        prompt: str,
        generator: torch.Generator,
    ) -> np.ndarray:
        """One view: ``image (S, S, 3)`` uint8 with ``holes (S, S)`` bool to fill, the view's normal map
        ``(3, S, S)`` -> the inpainted image ``(S, S, 3)`` float in [0, 255]."""
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
        ).images[0]
        return np.clip(out, 0, 1) * 255

    def __call__(self, a: PortraitAnalysis, mesh: HeadMesh, progress: Progress | None = None) -> TexturedHead:
        cfg, dev = self.cfg, self.device
        report = progress or (lambda f, m: None)
        if a.identity.shape[-1] != 512:
            raise ConfigError(
                f"the ID adapter needs a 512-D ArcFace identity; the analysis gave {a.identity_model}: "
                f"use analysis.identity=arcface"
            )
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
        prompt = cfg.prompt.replace("{caption}", a.caption)
        at = self._atlas(mesh)
        report(0.05, "uv atlas")
        colors = np.zeros((len(at.idx), 3), np.float32)
        known = np.zeros(len(at.idx), bool)
        source = np.zeros(len(at.idx), np.uint8)  # 0 none, 1 photo, 3 views
        vis, _, _, _ = self._project_photo(a, mesh, at.pts, at.nrm, colors)
        known |= vis
        source[vis] = 1
        report(0.1, "photo projected")

        v = torch.tensor(mesh.vertices, dtype=torch.float32, device=dev)
        f = torch.tensor(mesh.faces, device=dev)
        views = self._views(a)
        normals = [self._normal_image(c, v, f) for c in views]  # the normal ControlNet's input, per view
        k = 2 * cfg.hole_dilate + 1
        for i, vcam in enumerate(views):
            depth = self._depth_map(mesh, vcam)
            sil = np.isfinite(depth)
            vpix, vvis, _ = self._visible(at.pts, at.nrm, vcam, depth, cfg.view_min_facing)
            todo = vvis & ~known
            if todo.any():
                img, have = self._render_known(vpix[vvis & known], colors[vvis & known], vcam.width, sil)
                holes = sil & ~have
                if cfg.hole_dilate:
                    holes = (cv2.dilate(holes.astype(np.uint8), np.ones((k, k), np.uint8)) > 0) & sil
                img[~sil] = 0
                filled = self.inpaint_view(img, holes, normals[i], a.identity, prompt, gen)
                colors[todo] = self._sample(filled, vpix[todo])
                known |= todo
                source[todo] = 3
            report(0.1 + 0.5 * (i + 1) / len(views), f"inpainted view {i + 1}/{len(views)}")

        tex = self._fill_atlas(at.idx, colors, known)
        stats = {
            "texels_used": int(len(at.idx)),
            "from_photo": float((source == 1).mean()),
            "from_views": float((source == 3).mean()),
            "from_uv_fill": float((~known).mean()),
        }
        if cfg.refine_steps > 0:
            tex, refine = self.refine(
                a, v, f, at, tex, views, normals, prompt, gen, lambda fr, m: report(0.6 + 0.4 * fr, m)
            )
            stats.update(refine)
        texture = np.clip(tex + 0.5, 0, 255).astype(np.uint8)
        stats["coverage"] = float(np.isfinite(tex.reshape(-1, 3)[at.idx]).all(1).mean())
        stats["seen_coverage"] = float(known.mean())
        report(1.0, "texture done")
        return TexturedHead(
            mesh=mesh, uv=at.uv, uv_faces=at.uv_faces, uv_to_vertex=at.uv_to_vertex, texture=texture, stats=stats
        )

    def refine(
        self,
        a: PortraitAnalysis,
        v: torch.Tensor,
        f: torch.Tensor,
        at,
        tex: np.ndarray,
        views: list[Camera],
        normals: list[torch.Tensor],
        prompt: str,
        gen: torch.Generator,
        report: Progress,
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
        photo_mask = torch.from_numpy(mask_coverage(a.head_mask, S) > 0.99).to(dev)
        scheduler = self.pipe.scheduler
        alphas = self.guide.alphas
        first = last = None
        for step in range(cfg.refine_steps):
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
            loss_ref = F.mse_loss(ref[:, photo_mask], photo[:, photo_mask]) if photo_mask.any() else ref.sum() * 0
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
            last = {
                "loss": loss.item(),
                "l2": loss_l2.item(),
                "perceptual": loss_p.item(),
                "reference": loss_ref.item(),
            }
            first = first or last
            report((step + 1) / cfg.refine_steps, f"refine {step + 1}/{cfg.refine_steps} loss {last['loss']:.4g}")
        out = texture.detach().permute(1, 2, 0).cpu().numpy() * 255.0
        return out, {"refine_first": first, "refine_last": last}


@torch.no_grad()
def _ddim_to_zero(
    guide: IDGuidance, z_t: torch.Tensor, t: int, cond: Condition, scale: float, steps: int, alphas: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM from ``z_t`` at step ``t`` to a clean latent in ``steps`` steps."""
    ts = np.linspace(t, 0, steps + 1).round().astype(int)
    z = z_t
    for a_t, b_t in zip(ts[:-1], ts[1:]):
        tt = torch.tensor([int(a_t)], device=z.device)
        eps = guide.predict_noise(z, tt, cond, scale)
        ab = alphas[int(a_t)].to(z.dtype)
        z0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
        if b_t == 0:
            return z0
        ab_next = alphas[int(b_t)].to(z.dtype)
        z = ab_next.sqrt() * z0 + (1 - ab_next).sqrt() * eps
    return z
