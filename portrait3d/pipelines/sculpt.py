"""Stage 4, geometry sculpting (``fast``: mesh optimization at the reference view).

Vertex positions are optimized with Adam against
- the head mask: antialiased silhouette vs mask, MSE (silhouette gradients through ``antialias``);
- ID-aware geometry supervision (stage 3 of DESIGN.md, ``fast`` form): normal and depth maps of the
  person's 3D landmark surface rendered at the reference view; normals by cosine, depth by negative
  Pearson correlation (scale- and shift-free, as in the paper);
- priors: Laplacian smoothness (keep the initial shape's Laplacian coordinates) and left/right
  symmetry of the skull (the face keeps its own asymmetry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera
from .config import Schedule, register
from .image_io import mask_coverage
from .init import oriented_face_triangles
from .mesh import uniform_laplacian, vertex_normals
from .render import get_rasterizer
from .types import HeadMesh, PortraitAnalysis

Progress = Callable[[float, str], None]


def negative_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``-corr(a, b)`` over all elements: 0-dimensional, in [-1, 1]."""
    a = a - a.mean()
    b = b - b.mean()
    return -(a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def reference_geometry(a: PortraitAnalysis, cam: Camera) -> dict[str, torch.Tensor]:
    """Stage 3 (``fast``): camera-space normals ``(H, W, 3)``, depth ``(H, W)`` and their mask
    ``(H, W)`` of the landmark surface at the reference view."""
    r = get_rasterizer("torch")
    v = torch.tensor(a.landmarks_3d[:468], dtype=torch.float32)
    tri = torch.tensor(oriented_face_triangles(a.landmarks_3d[:468]))
    rast = r.rasterize(cam.clip(v.double()).float(), tri, (cam.height, cam.width))
    n_cam = vertex_normals(v, tri) @ torch.tensor(cam.R, dtype=torch.float32).T
    normal = F.normalize(r.interpolate(n_cam, rast, tri), dim=-1)
    depth = r.interpolate(cam.to_camera(v)[:, 2:], rast, tri)[..., 0]
    return {"normal": normal, "depth": depth, "mask": rast.mask}


@register("sculpt", "reference_view")
class ReferenceViewSculpt:
    @dataclass
    class Config:
        steps: int = field(default=80, metadata={"help": "optimization steps"})
        lr: float = field(default=6e-4, metadata={"help": "Adam learning rate on vertex positions (metres)"})
        resolution: int = field(default=256, metadata={"help": "render resolution of the reference view"})
        w_mask: Schedule = field(
            default=Schedule.parse(1.0), metadata={"help": "silhouette MSE weight (number or [[step, value], ...])"}
        )
        w_normal: Schedule = field(default=Schedule.parse(0.5), metadata={"help": "face normal (1 - cos) weight"})
        w_depth: Schedule = field(default=Schedule.parse(0.2), metadata={"help": "face depth negative-Pearson weight"})
        w_laplacian: Schedule = field(default=Schedule.parse(2e4), metadata={"help": "Laplacian smoothness weight"})
        w_symmetry: Schedule = field(
            default=Schedule.parse(50.0), metadata={"help": "left/right symmetry weight (skull only)"}
        )
        face_mobility: float = field(
            default=0.05,
            metadata={
                "help": "how far face vertices may move relative to the rest (0: the landmark face stays as it is)"
            },
        )

    def __init__(self, cfg: "ReferenceViewSculpt.Config"):
        self.cfg = cfg
        self.raster = get_rasterizer("torch")

    def __call__(self, a: PortraitAnalysis, head: HeadMesh, progress: Progress | None = None) -> tuple[HeadMesh, dict]:
        cfg = self.cfg
        res = cfg.resolution
        cam = a.camera.resized(res)
        mask = torch.from_numpy(mask_coverage(a.head_mask, res))[..., None]
        target = reference_geometry(a, cam)
        tri = torch.tensor(head.faces)
        v0 = torch.tensor(head.vertices, dtype=torch.float32)
        L = uniform_laplacian(head.faces, len(v0))
        lap0 = torch.sparse.mm(L, v0)
        mirror = torch.tensor(head.mirror)
        flip = torch.tensor([-1.0, 1.0, 1.0])
        w_sym = torch.tensor(1.0 - head.face_weight)[:, None]
        R = torch.tensor(cam.R, dtype=torch.float32)

        # The face keeps the person's landmark geometry: its vertices move only by face_mobility.
        mobility = torch.tensor(np.clip(1.0 - head.face_weight, cfg.face_mobility, 1.0), dtype=torch.float32)[:, None]
        delta = torch.zeros_like(v0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.lr)
        history = []
        for step in range(cfg.steps):
            v = v0 + delta * mobility
            pos = cam.clip(v.double()).float()
            rast = self.raster.rasterize(pos, tri, (res, res))
            sil = self.raster.antialias(rast.mask.float()[..., None], rast, pos, tri)
            l_mask = F.mse_loss(sil, mask)
            both = rast.mask & target["mask"]
            n = F.normalize(self.raster.interpolate(vertex_normals(v, tri) @ R.T, rast, tri), dim=-1)
            d = self.raster.interpolate(cam.to_camera(v)[:, 2:], rast, tri)[..., 0]
            if both.sum() > 16:
                l_normal = (1 - (n[both] * target["normal"][both]).sum(-1)).mean()
                l_depth = negative_pearson(d[both], target["depth"][both])
            else:
                l_normal = l_depth = v.sum() * 0
            l_lap = (torch.sparse.mm(L, v) - lap0).pow(2).sum(1).mean()
            l_sym = ((v - v[mirror] * flip).pow(2) * w_sym).sum(1).mean()
            loss = (
                cfg.w_mask(step) * l_mask
                + cfg.w_normal(step) * l_normal
                + cfg.w_depth(step) * l_depth
                + cfg.w_laplacian(step) * l_lap
                + cfg.w_symmetry(step) * l_sym
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "mask": l_mask.item(),
                    "normal": l_normal.item(),
                    "depth": l_depth.item(),
                }
            )
            if progress:
                progress((step + 1) / cfg.steps, f"loss {loss.item():.4f}")
        v = (v0 + delta * mobility).detach()
        out = HeadMesh(
            vertices=v.numpy().astype(np.float32), faces=head.faces, mirror=head.mirror, face_weight=head.face_weight
        )
        return out, {"first": history[0] if history else {}, "last": history[-1] if history else {}}
