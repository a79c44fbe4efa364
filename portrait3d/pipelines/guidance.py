"""ID-aware Score Distillation (ISD): the gradient a diffusion model conditioned on the person gives a
rendered image.

For a camera: the text (caption or prompt, with the view's direction appended as the release's
threestudio prompts do: "..., front view" / side / back / overhead), the 512-D ArcFace embedding
(through IP-Adapter FaceID's decoupled cross-attention; as in the release, only for views within
``id_max_azimuth`` of the face, so that no face is pulled onto the back of the head) and the 3D
landmarks drawn at that camera (landmark ControlNet) condition the UNet. The rendering is encoded to
latents ``z``, noised at ``t``, and the noise is predicted with classifier-free guidance;
``w(t) (eps_pred - eps)`` is the gradient on ``z``, never back-propagated through the UNet (latent
SDS form). Attention runs through PyTorch SDPA (diffusers' default).

Example:
    >>> isd = IDGuidance(pipe, ISDSettings())                                       # doctest: +SKIP
    >>> cond = isd.condition("a photo of a man", identity, landmarks_3d, camera)    # doctest: +SKIP
    >>> loss, info = isd(render_rgb, cond, step)                                    # doctest: +SKIP
    >>> loss.backward()  # the ISD gradient reaches whatever produced render_rgb    # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .acceleration import autocast_dtype, compile_denoiser, prepare_modules
from .camera import Camera
from .landmark_image import landmark_image
from .random_views import view_angles, view_direction
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
    id_scale: float = setting(1.0, "IP-Adapter FaceID scale where the identity conditions a view", ge=0)
    id_max_azimuth: float = setting(
        70.0, "the identity conditions only views within this azimuth of the face, degrees (the release's 70)", ge=0
    )
    view_prompts: bool = setting(True, "append the view's direction to the prompt (front/side/back/overhead view)")
    front_threshold: float = setting(45.0, "azimuth within which a view is a front view, degrees", ge=0, le=180)
    back_threshold: float = setting(60.0, "azimuth from the back within which a view is a back view", ge=0, le=180)
    overhead_threshold: float = setting(60.0, "elevation above which a view is an overhead view", ge=-90, le=90)


@dataclass
class Condition:
    """What conditions the UNet for one batch of cameras."""

    text: torch.Tensor  # (2B, 77, D): unconditional, then conditional
    id_embeds: torch.Tensor  # (2B, 1, 512): zeros, then the ArcFace embedding
    control: torch.Tensor  # (2B, 3, H, W) in [0, 1]: the ControlNet input at each camera
    id_on: torch.Tensor  # (B,) bool: whether the identity conditions each camera

    @staticmethod
    def stack(conds: list[Condition]) -> Condition:
        """Several conditionings (e.g. of several heads, each with its own identity) as one batch, in
        order: the unconditional halves first, then the conditional ones, as in each."""

        def halves(name: str) -> torch.Tensor:
            parts = [getattr(c, name).chunk(2) for c in conds]
            return torch.cat([u for u, _ in parts] + [c for _, c in parts])

        return Condition(
            text=halves("text"),
            id_embeds=halves("id_embeds"),
            control=halves("control"),
            id_on=torch.cat([c.id_on for c in conds]),
        )


def ip_adapter_processors(unet: Any) -> list[Any]:
    """The UNet's IP-Adapter attention processors (those with a per-adapter ``scale`` list)."""
    return [p for p in unet.attn_processors.values() if isinstance(getattr(p, "scale", None), list)]


@contextmanager
def ip_adapter_scale(processors: list[Any], scale: float):
    """Every IP-Adapter processor at ``scale`` inside the block, as it was after (0: the plain UNet,
    since the adapter only adds its scaled attention to the text attention)."""
    before = [list(p.scale) for p in processors]
    for p in processors:
        p.scale = [scale] * len(p.scale)
    try:
        yield
    finally:
        for p, s in zip(processors, before, strict=True):
            p.scale = s


def id_embeds(identity: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """``(2, 1, 1, D)`` IP-Adapter FaceID image embeds for classifier-free guidance: zeros, then the
    ArcFace embedding (what diffusers' ``ip_adapter_image_embeds`` takes for one FaceID adapter)."""
    e = torch.as_tensor(identity, dtype=torch.float32).reshape(1, 1, 1, -1)
    return torch.cat([torch.zeros_like(e), e]).to(device, dtype)


class IDGuidance:
    """ISD with the modules of a ControlNet pipeline (see ``models.diffusion``) that has the ID adapter.

    ``autocast`` and ``compile`` are ``DiffusionStageSettings``' settings of the same names: the UNet,
    ControlNet and VAE run in that precision (the losses in float32), and the UNet + ControlNet call
    compiled as asked (``compile_note`` says how it ended up)."""

    def __init__(self, pipe: Any, settings: ISDSettings, autocast: str = "none", compile: str = "none") -> None:
        self.pipe, self.cfg = pipe, settings
        self.unet, self.vae, self.controlnet = pipe.unet, pipe.vae, pipe.controlnet
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype
        self.alphas = pipe.scheduler.alphas_cumprod.to(self.device)
        self.num_train = int(pipe.scheduler.config.num_train_timesteps)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._ip = ip_adapter_processors(self.unet)
        self.amp_dtype = autocast_dtype(autocast, self.device)
        prepare_modules([self.unet, self.controlnet, self.vae], self.device)
        self._denoise, self.compile_note = compile_denoiser(self._denoise_eager, compile)

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

    def view_prompt(self, prompt: str, azimuth: float, elevation: float) -> str:
        """``prompt`` with the view's direction, as the release's threestudio prompt processor appends it."""
        if not self.cfg.view_prompts:
            return prompt
        c = self.cfg
        direction = view_direction(azimuth, elevation, c.front_threshold, c.back_threshold, c.overhead_threshold)
        return f"{prompt}, {direction} view"

    def condition(
        self,
        prompt: str,
        identity: np.ndarray,
        landmarks_3d: np.ndarray,
        cameras: list[Camera],
        target: np.ndarray | None = None,
    ) -> Condition:
        """The conditioning for ``cameras`` (each at the render size, looking at ``target``): text with
        each view's direction, the identity where the view is near the face, landmark images."""
        control = torch.stack([torch.from_numpy(landmark_image(landmarks_3d, cam)) for cam in cameras])
        return self.condition_with(prompt, identity, control.permute(0, 3, 1, 2).float() / 255.0, cameras, target)

    def condition_with(
        self,
        prompt: str,
        identity: np.ndarray,
        control: torch.Tensor,
        cameras: list[Camera] | None = None,
        target: np.ndarray | None = None,
    ) -> Condition:
        """The conditioning with a given ControlNet input ``control (B, 3, H, W)`` in [0, 1]; without
        ``cameras`` the prompt is taken as it is and the identity conditions every image."""
        B = len(control)
        angles = [view_angles(cam, target) for cam in cameras] if cameras is not None else [None] * B
        texts = [self.text(self.view_prompt(prompt, *a) if a else prompt).chunk(2) for a in angles]
        id_on = [a is None or abs(a[0]) < self.cfg.id_max_azimuth for a in angles]  # view_angles: (-180, 180]
        control = control.to(self.device, self.dtype)
        return Condition(
            text=torch.cat([u for u, _ in texts] + [c for _, c in texts]),
            id_embeds=id_embeds(identity, self.device, self.dtype)[:, 0].repeat_interleave(B, 0),
            control=torch.cat([control, control]),
            id_on=torch.tensor(id_on),
        )

    def amp(self) -> Any:
        """The autocast context of the diffusion models' forward passes (none without a dtype)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> latents ``(B, 4, H/8, W/8)`` (differentiable; float32 out)."""
        with self.amp():
            z = self.vae.encode(image.to(self.dtype) * 2 - 1).latent_dist.mean
        return z.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided noise prediction for latents ``z_t (B, 4, h, w)`` at steps ``t (B,)``;
        the cameras with and without the identity go through the UNet as two groups."""
        on = cond.id_on.tolist()
        if all(on) or not any(on):
            return self._guided(z_t, t, cond, guidance_scale, self.cfg.id_scale if on[0] else 0.0)
        eps = torch.empty_like(z_t)
        for flag in (True, False):
            idx = torch.tensor([i for i, o in enumerate(on) if o == flag], device=z_t.device)
            sub = _select(cond, idx.cpu())
            eps[idx] = self._guided(z_t[idx], t[idx], sub, guidance_scale, self.cfg.id_scale if flag else 0.0)
        return eps

    def _guided(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, guidance_scale: float, id_scale: float
    ) -> torch.Tensor:
        zin, tin = torch.cat([z_t, z_t]).to(self.dtype), torch.cat([t, t])
        with ip_adapter_scale(self._ip, id_scale), self.amp():
            eps = self._denoise(zin, tin, cond.text, cond.control, cond.id_embeds)
        eps_u, eps_c = eps.float().chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    def _denoise_eager(
        self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor, control: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's noise prediction ``(2B, 4, h, w)`` with the landmark ControlNet's residuals: the
        hot path, one function of tensors so that it compiles to one graph."""
        down, mid = self.controlnet(
            z,
            t,
            encoder_hidden_states=text,
            controlnet_cond=control,
            conditioning_scale=self.cfg.control_scale,
            return_dict=False,
        )
        return self.unet(
            z,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs={"image_embeds": [ids]},
        ).sample

    @torch.no_grad()
    def warm_up(self, batch: int, size: int, prompt: str = "a head") -> None:
        """One denoising call of each kind (with and without the identity) at ``batch`` images of
        ``size`` pixels: a compiled denoiser compiles here, not in a head's first step."""
        cond = self.condition_with(prompt, np.zeros(512, np.float32), torch.zeros(batch, 3, size, size))
        z = torch.zeros(batch, 4, size // 8, size // 8, device=self.device)
        t = torch.full((batch,), self.num_train // 2, device=self.device)
        for id_scale in (self.cfg.id_scale, 0.0):
            self._guided(z, t, cond, 1.0, id_scale)

    def __call__(
        self,
        image: torch.Tensor,
        cond: Condition,
        step: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """ISD loss of renders ``image (B, 3, H, W)`` in [0, 1]: its gradient w.r.t. the latents is
        ``w(t) (eps_pred - eps)`` with ``w(t) = 1 - alpha_bar(t)``. The loss is the mean over the batch;
        ``info["losses"] (B,)`` holds each image's own. With a list of ``B`` generators, image ``i``
        draws its ``t`` and noise from generator ``i`` as a call with it alone would (several heads
        batched through one UNet, each as if alone)."""
        z = self.encode(image)
        B = z.shape[0]
        lo = int(self.cfg.t_min(step) * self.num_train)
        hi = max(int(self.cfg.t_max(step) * self.num_train), lo + 1)
        gens = generator if isinstance(generator, list) else None
        if gens is None:
            t = torch.randint(lo, hi, (B,), generator=generator)
            noise = torch.randn(z.shape, generator=generator)
        else:
            if len(gens) != B:
                raise ValueError(f"{len(gens)} generators for {B} images")
            draws = [
                (torch.randint(lo, hi, (1,), generator=g), torch.randn((1, *z.shape[1:]), generator=g)) for g in gens
            ]
            t, noise = torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])
        t, noise = t.to(self.device), noise.to(self.device, z.dtype)
        z_t = self.pipe.scheduler.add_noise(z.detach(), noise, t)
        eps = self.predict_noise(z_t, t, cond, self.cfg.guidance_scale)
        w = (1 - self.alphas[t]).reshape(B, 1, 1, 1).to(z.dtype)
        grad = torch.nan_to_num(w * (eps - noise))
        losses = 0.5 * ((z - (z - grad).detach()) ** 2).flatten(1).sum(1)
        # tensors: reading them waits for the device
        return losses.mean(), {"t": t, "grad_norm": grad.norm(), "losses": losses}


def _select(cond: Condition, idx: torch.Tensor) -> Condition:
    """The conditioning of the cameras ``idx`` of ``cond`` (its halves are unconditional, conditional)."""
    B = len(cond.id_on)
    both = torch.cat([idx, idx + B]).to(cond.text.device)
    return Condition(
        text=cond.text[both], id_embeds=cond.id_embeds[both], control=cond.control[both], id_on=cond.id_on[idx]
    )
