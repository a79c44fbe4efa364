"""diffusers components of a model root: an SD1.5 base with the shared VAE, ControlNets, and the
IP-Adapter FaceID, assembled as a diffusers pipeline (its sampling loops serve the reference maps and
the inpainting views; its modules serve ISD).

Example:
    >>> pipe = load_controlnet_pipeline(ModelRoot(root), "geometry_normal", ("controlnet_landmarks",))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import ModelError
from ..stage import Reporter
from .root import ModelRoot


def from_folder(cls: type, folder: str | Path, what: str, **kw: Any) -> Any:
    """``cls.from_pretrained`` of a local folder (a diffusers or transformers class); a ModelError naming
    ``what`` when it cannot load."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load {what} from {folder}: {e}") from None


def load_vae(root: ModelRoot, base: str | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """The VAE of base role ``base`` when that role carries its own (``vae/``), else the shared ``vae`` role."""
    from diffusers import AutoencoderKL

    if base is not None and "vae/config.json" in root.entry(base)["files"]:
        return from_folder(AutoencoderKL, root.folder(base) / "vae", f"{base} vae", torch_dtype=dtype)
    return from_folder(AutoencoderKL, root.folder("vae"), "vae", torch_dtype=dtype)


def load_scheduler(folder: Path, what: str, own: bool = False) -> Any:
    """A DDIM scheduler from a base's scheduler config (the noise schedule is the base's), or with
    ``own`` the scheduler class that config names (e.g. SD1.5's PNDM), as the base's own pipeline runs."""
    import diffusers

    cls = diffusers.DDIMScheduler
    if own:
        name = _read_config(folder / "scheduler_config.json", what).get("_class_name", "DDIMScheduler")
        cls = getattr(diffusers, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ModelError(f"{what}: {name!r} is not a diffusers scheduler")
    return from_folder(cls, folder, what)


def _read_config(path: Path, what: str) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {what} config {path}: {e}") from None


def load_controlnet_pipeline(
    root: ModelRoot,
    base: str,
    controlnets: tuple[str, ...],
    inpaint: bool = False,
    id_adapter: bool = True,
    id_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    own_components: bool = False,
):
    """A ``StableDiffusionControlNet[Inpaint]Pipeline`` of role ``base`` (an ``sd15`` role), the
    ControlNet roles (several become a multi-ControlNet), and the ID adapter. Its VAE is the shared
    ``vae`` role and its scheduler DDIM; with ``own_components``, the base's own VAE (where it carries
    one) and its own scheduler class, as a plain pipeline of that repository samples."""
    quiet_libraries()
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = root.folder(base)
    nets = [from_folder(ControlNetModel, root.folder(c), c, torch_dtype=dtype) for c in controlnets]
    cls = StableDiffusionControlNetInpaintPipeline if inpaint else StableDiffusionControlNetPipeline
    pipe = cls(
        vae=load_vae(root, base if own_components else None, dtype),
        text_encoder=from_folder(CLIPTextModel, folder / "text_encoder", f"{base} text encoder", dtype=dtype),
        tokenizer=from_folder(CLIPTokenizer, folder / "tokenizer", f"{base} tokenizer"),
        unet=from_folder(UNet2DConditionModel, folder / "unet", f"{base} unet", torch_dtype=dtype),
        controlnet=nets[0] if len(nets) == 1 else nets,
        scheduler=load_scheduler(folder / "scheduler", f"{base} scheduler", own=own_components),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if id_adapter:
        weights = root.file("ip_adapter_faceid", (".safetensors", ".bin"))
        try:
            pipe.load_ip_adapter(str(weights.parent), subfolder="", weight_name=weights.name, image_encoder_folder=None)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelError(f"cannot load the ip_adapter_faceid role into {base}: {e}") from None
        pipe.set_ip_adapter_scale(id_scale)
    pipe.set_progress_bar_config(disable=True)
    _freeze(pipe)
    return pipe.to(device)


def quiet_libraries() -> None:
    """Our own progress reporting replaces the libraries' loading bars and advice (e.g. on the safety
    checker, which a head generator has no use for); their warnings and errors still show."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _freeze(pipe: Any) -> None:
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet):
        module.requires_grad_(False)
        module.eval()


def with_controlnet(pipe: Any, root: ModelRoot, role: str, **replace: Any) -> Any:
    """A pipeline of the same class sharing ``pipe``'s modules (UNet with its ID adapter, VAE, text
    encoder, scheduler) with the ControlNet of ``role`` instead of its own, and any component given
    in ``replace`` (e.g. ``vae=``, ``scheduler=``) instead of ``pipe``'s."""
    from diffusers import ControlNetModel

    net = from_folder(ControlNetModel, root.folder(role), role, torch_dtype=pipe.unet.dtype)
    out = type(pipe)(**{**pipe.components, **replace, "controlnet": net})
    out.set_progress_bar_config(disable=True)
    _freeze(out)
    return out.to(pipe.unet.device)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA where present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ModelError(f"bad device {name!r}: {e}") from None


def step_callback(report: Reporter, steps: int) -> Callable[[Any, int, Any, dict], dict]:
    """A diffusers ``callback_on_step_end`` that reports each of ``steps`` denoising steps and raises
    CancelledError (out of the pipeline call) once the run is cancelled; it changes no tensor."""

    def callback(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        report((i + 1) / max(steps, 1), f"denoising {i + 1}/{steps}")
        return kwargs

    return callback
