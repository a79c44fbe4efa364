"""nvdiffrast backend (CUDA only). ``pip install diffrp-nvdiffrast`` provides ``nvdiffrast.torch``,
which compiles its CUDA plugin on first use. It maps nvdiffrast's ``(1, H, W, 4)`` raster
``(u, v, z/w, id + 1)`` onto :class:`Rast`."""

from __future__ import annotations

import nvdiffrast.torch as dr  # ImportError where it is not installed: get_rasterizer falls back
import torch

from .base import Rast


class NvdiffrastRasterizer:
    name = "nvdiffrast"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.ctx = dr.RasterizeCudaContext(device=device)

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]) -> Rast:
        rast, _ = dr.rasterize(self.ctx, pos[None].float().contiguous(), tri.int().contiguous(), resolution)
        u, v, zw, tid = rast[0].unbind(-1)
        bary = torch.stack([u, v, 1 - u - v], -1) * (tid > 0)[..., None]
        return Rast(tri_id=tid.long() - 1, bary=bary, depth=torch.where(tid > 0, zw, torch.ones_like(zw)), raw=rast)

    def interpolate(self, attr: torch.Tensor, rast: Rast, tri: torch.Tensor) -> torch.Tensor:
        out, _ = dr.interpolate(attr[None].float().contiguous(), rast.raw, tri.int().contiguous())
        return out[0]

    def antialias(self, color: torch.Tensor, rast: Rast, pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
        out = dr.antialias(color[None].contiguous(), rast.raw, pos[None].float().contiguous(), tri.int().contiguous())
        return out[0]
