"""The diffusion hot path on an accelerator: mixed precision, memory format, and a compiled denoiser
(``torch.compile``, or Torch-TensorRT where it imports and works).

The denoiser is one function of fixed-shape tensors (the UNet and its ControlNet for a batch of
latents, steps, text, ControlNet input and ID embeddings), so it compiles to one graph per batch
size and ID-adapter scale; :func:`compile_denoiser` says in its note what it did, and why when it did
not do what was asked.

Example:
    >>> autocast_dtype("auto", torch.device("cpu")) is None
    True
    >>> fn, note = compile_denoiser(lambda x: x + 1, "none")
    >>> note
    'eager'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``setting`` (auto: bf16 on CUDA, none elsewhere), or None for none."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _DTYPES.get(setting)


def tensorrt_unavailable() -> str | None:
    """Why Torch-TensorRT cannot compile here, or None when it can."""
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU"
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as e:  # a missing package, or one that fails to load its libraries
        return f"torch_tensorrt does not import: {type(e).__name__}: {e}"
    return None


def compile_denoiser(fn: Callable[..., Any], mode: str, backend: str = "inductor") -> tuple[Callable[..., Any], str]:
    """``fn`` compiled as ``mode`` asks (see ``DiffusionStageSettings.compile``), and a note. ``backend``
    is ``torch.compile``'s (tests trace with ``aot_eager``: inductor's code generation takes minutes on
    a CPU)."""
    if mode == "none":
        return fn, "eager"
    if mode == "tensorrt":
        why = tensorrt_unavailable()
        if why is None:
            import torch_tensorrt  # noqa: F401  (registers the backend)

            compiled = torch.compile(
                fn, backend="torch_tensorrt", dynamic=False, options={"enabled_precisions": {torch.bfloat16}}
            )
            return compiled, "torch_tensorrt"
        return torch.compile(fn, mode="max-autotune", dynamic=False), f"torch.compile max-autotune ({why})"
    if backend != "inductor":
        return torch.compile(fn, backend=backend, dynamic=False), f"torch.compile {backend}"
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False), f"torch.compile {mode}"


def prepare_modules(modules: list[torch.nn.Module], device: torch.device) -> None:
    """Convolution-heavy modules in ``channels_last`` on CUDA (faster tensor-core convolutions)."""
    if device.type == "cuda":
        for m in modules:
            m.to(memory_format=torch.channels_last)
