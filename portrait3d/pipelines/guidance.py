"""ID-aware Score Distillation (ISD): the gradient a diffusion model conditioned on the person gives a
rendered image.

For a camera: the text (caption or prompt), the 512-D ArcFace embedding (through IP-Adapter FaceID's
decoupled cross-attention) and the 3D landmarks drawn at that camera (landmark ControlNet) condition
the UNet. The rendering is encoded to latents ``z``, noised at ``t``, and the noise is predicted with
classifier-free guidance; ``w(t) (eps_pred - eps)`` is the gradient on ``z``, never back-propagated
through the UNet (latent SDS form). Attention runs through PyTorch SDPA (diffusers' default).

Example:
    >>> isd = IDGuidance(pipe, ISDSettings())                                       # doctest: +SKIP
    >>> cond = isd.condition("a photo of a man", identity, landmarks_3d, camera)    # doctest: +SKIP
    >>> loss, info = isd(render_rgb, cond, step)                                    # doctest: +SKIP
    >>> loss.backward()  # the ISD gradient reaches whatever produced render_rgb    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera
from .landmark_image import landmark_image
from .schedule import Schedule
from .settings import setting


@dataclass(frozen=True)
class ISDSettings:
    guidance_scale: float = setting(50.0, "classifier-free guidance scale of ISD", ge=0)
    t_min: Schedule = setting(
        Schedule(((0, 0.02),)),
        "lowest noise level sampled, as a fraction of the training steps (schedulable)",
        ge=0,
        le=1,
    )
    t_max: Schedule = setting(
        Schedule(((0, 0.5),)),
        "highest noise level sampled, as a fraction of the training steps (schedulable)",
        ge=0,
        le=1,
    )
    control_scale: float = setting(1.0, "landmark ControlNet conditioning scale", ge=0)
    negative_prompt: str = setting("", "text for the unconditional branch")


@dataclass
class Condition:
    """What conditions the UNet for one batch of cameras."""

    text: torch.Tensor  # (2B, 77, D): unconditional, then conditional
    id_embeds: torch.Tensor  # (2B, 1, 512): zeros, then the ArcFace embedding
    control: torch.Tensor  # (2B, 3, H, W) in [0, 1]: the landmark image at each camera


def id_embeds(identity: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """``(2, 1, 1, D)`` IP-Adapter FaceID image embeds for classifier-free guidance: zeros, then the
    ArcFace embedding (what diffusers' ``ip_adapter_image_embeds`` takes for one FaceID adapter)."""
    e = torch.as_tensor(identity, dtype=torch.float32).reshape(1, 1, 1, -1)
    return torch.cat([torch.zeros_like(e), e]).to(device, dtype)


class IDGuidance:
    """ISD with the modules of a ControlNet pipeline (see ``models.diffusion``) that has the ID adapter."""

    def __init__(self, pipe: Any, settings: ISDSettings) -> None:
        self.pipe, self.cfg = pipe, settings
        self.unet, self.vae, self.controlnet = pipe.unet, pipe.vae, pipe.controlnet
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.alphas = pipe.scheduler.alphas_cumprod.to(self.device)
        self.num_train = int(pipe.scheduler.config.num_train_timesteps)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """``(2, 77, D)`` embeddings of the negative prompt and ``prompt`` (cached)."""
        key = (prompt, self.cfg.negative_prompt)
        if key not in self._text_cache:
            tok = self.pipe.tokenizer(
                [self.cfg.negative_prompt, prompt],
                padding="max_length",
                truncation=True,
                max_length=self.pipe.tokenizer.model_max_length,
                return_tensors="pt",
            )
            self._text_cache[key] = self.pipe.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)
        return self._text_cache[key]

    def condition(
        self, prompt: str, identity: np.ndarray, landmarks_3d: np.ndarray, cameras: list[Camera]
    ) -> Condition:
        """The conditioning for ``cameras`` (each at the render size): text, ID, landmark images."""
        control = torch.stack([torch.from_numpy(landmark_image(landmarks_3d, cam)) for cam in cameras])
        return self.condition_with(prompt, identity, control.permute(0, 3, 1, 2).float() / 255.0)

    def condition_with(self, prompt: str, identity: np.ndarray, control: torch.Tensor) -> Condition:
        """The conditioning with a given ControlNet input ``control (B, 3, H, W)`` in [0, 1]."""
        B = len(control)
        u, c = self.text(prompt).chunk(2)
        control = control.to(self.device, self.dtype)
        return Condition(
            text=torch.cat([u.expand(B, -1, -1), c.expand(B, -1, -1)]),
            id_embeds=id_embeds(identity, self.device, self.dtype)[:, 0].repeat_interleave(B, 0),
            control=torch.cat([control, control]),
        )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> latents ``(B, 4, H/8, W/8)`` (differentiable)."""
        z = self.vae.encode(image.to(self.dtype) * 2 - 1).latent_dist.mean
        return z * self.vae.config.scaling_factor

    @torch.no_grad()
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided noise prediction for latents ``z_t (B, 4, h, w)`` at steps ``t (B,)``."""
        zin, tin = torch.cat([z_t, z_t]), torch.cat([t, t])
        down, mid = self.controlnet(
            zin,
            tin,
            encoder_hidden_states=cond.text,
            controlnet_cond=cond.control,
            conditioning_scale=self.cfg.control_scale,
            return_dict=False,
        )
        eps = self.unet(
            zin,
            tin,
            encoder_hidden_states=cond.text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs={"image_embeds": [cond.id_embeds]},
        ).sample
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    def __call__(
        self, image: torch.Tensor, cond: Condition, step: int = 0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """ISD loss of renders ``image (B, 3, H, W)`` in [0, 1]: its gradient w.r.t. the latents is
        ``w(t) (eps_pred - eps)`` with ``w(t) = 1 - alpha_bar(t)``."""
        z = self.encode(image)
        B = z.shape[0]
        lo = int(self.cfg.t_min(step) * self.num_train)
        hi = max(int(self.cfg.t_max(step) * self.num_train), lo + 1)
        t = torch.randint(lo, hi, (B,), generator=generator).to(self.device)
        noise = torch.randn(z.shape, generator=generator).to(self.device, z.dtype)
        z_t = self.pipe.scheduler.add_noise(z.detach(), noise, t)
        eps = self.predict_noise(z_t, t, cond, self.cfg.guidance_scale)
        w = (1 - self.alphas[t]).reshape(B, 1, 1, 1).to(z.dtype)
        grad = torch.nan_to_num(w * (eps - noise))
        loss = 0.5 * F.mse_loss(z, (z - grad).detach(), reduction="sum") / B
        return loss, {"t": t, "grad_norm": grad.norm()}  # tensors: reading them waits for the device
