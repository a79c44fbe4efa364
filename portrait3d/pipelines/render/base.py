"""What every rasterizer backend gives and takes: :class:`Rast` and the :class:`Rasterizer` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rast:
    """Per-pixel rasterization of one view.

    tri_id: ``(H, W)`` int64 triangle index, -1 for background.
    bary:   ``(H, W, 3)`` perspective-correct barycentrics (differentiable w.r.t. positions).
    depth:  ``(H, W)`` NDC depth z/w (1 for background).
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    raw: torch.Tensor | None = None  # a backend's native raster (nvdiffrast's carries its gradient path)

    @property
    def mask(self) -> torch.Tensor:
        """``(H, W)`` bool coverage."""
        return self.tri_id >= 0


class Rasterizer(Protocol):
    device: torch.device  # where its inputs and outputs live

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int]) -> Rast: ...

    def interpolate(self, attr: torch.Tensor, rast: Rast, tri: torch.Tensor) -> torch.Tensor: ...

    def antialias(self, color: torch.Tensor, rast: Rast, pos: torch.Tensor, tri: torch.Tensor) -> torch.Tensor: ...
