"""One rasterizer interface in the style of nvdiffrast: rasterize, interpolate, antialias.

A backend is chosen by name (``"torch"`` on any device, ``"nvdiffrast"`` on CUDA). Positions are
clip-space ``(V, 4)`` (see :mod:`portrait3d.pipelines.camera`), triangles ``(F, 3)`` int64.

Example:
    >>> import torch
    >>> r = get_rasterizer("torch")
    >>> pos = torch.tensor([[-.5, -.5, 0, 1], [.5, -.5, 0, 1], [0, .5, 0, 1.]])
    >>> rast = r.rasterize(pos, torch.tensor([[0, 1, 2]]), (8, 8))
    >>> int((rast.tri_id >= 0).sum()) > 0
    True
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .base import Rast, Rasterizer

__all__ = ["Rast", "Rasterizer", "get_rasterizer"]


def get_rasterizer(name: str = "auto", device: str | torch.device = "cpu") -> Rasterizer:
    """``"torch"``, ``"nvdiffrast"``, or ``"auto"`` (nvdiffrast on CUDA when it imports, else torch)."""
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            try:
                from .nvdiffrast_backend import NvdiffrastRasterizer

                return NvdiffrastRasterizer(device)
            except ImportError:
                pass
        name = "torch"
    if name == "torch":
        from .torch_backend import TorchRasterizer

        return TorchRasterizer()
    if name == "nvdiffrast":
        if device.type != "cuda":
            raise ConfigError("the nvdiffrast rasterizer needs a CUDA device; use 'torch' on CPU")
        from .nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    raise ConfigError(f"unknown rasterizer {name!r}; choices: auto, torch, nvdiffrast")
