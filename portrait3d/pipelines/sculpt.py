"""Stages 3-4 of the ``fast`` profile: ID-aware geometry supervision and mesh optimization at the
reference view.

Vertex positions are optimized with Adam against
- the head mask: antialiased silhouette vs mask, MSE (silhouette gradients through ``antialias``);
- ID-aware geometry supervision (stage 3 of the method, ``fast`` form): normal and depth maps of the
  person's 3D landmark surface rendered at the reference view; normals by cosine, depth by negative
  Pearson correlation (scale- and shift-free, as in the paper);
- priors: Laplacian smoothness (keep the initial shape's Laplacian coordinates) and left/right
  symmetry of the skull (the face keeps its own asymmetry);
then on a side the moves make wider than ``max_breadth`` times the head's depth they are taken only that far,
as in init (:func:`.proportions.limit_breadth`): the silhouette loss pulls a side that init held back toward the mask;
and a head the moves make deeper than ``max_depth`` times its width has its back shortened, as in init.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera, standing_rotation
from .face_geometry import MESH_POINTS, oriented_face_triangles
from .image_io import mask_coverage
from .losses import mask_mse, negative_pearson
from .mesh import uniform_laplacian, vertex_normals
from .proportions import limit_breadth, limit_depth
from .registry import register
from .render import get_rasterizer
from .schedule import Schedule
from .settings import setting
from .stage import Reporter
from .types import HeadMesh, PortraitAnalysis, SculptInput, SculptResult


def reference_geometry(a: PortraitAnalysis, cam: Camera) -> dict[str, torch.Tensor]:
    """Stage 3 (``fast``): camera-space normals ``(H, W, 3)``, depth ``(H, W)`` and their mask
    ``(H, W)`` of the landmark surface at the reference view."""
    r = get_rasterizer("torch")
    v = torch.tensor(a.landmarks_3d[:MESH_POINTS], dtype=torch.float32)
    tri = torch.tensor(oriented_face_triangles(a.landmarks_3d[:MESH_POINTS]))
    rast = r.rasterize(cam.clip(v.double()).float(), tri, (cam.height, cam.width))
    n_cam = vertex_normals(v, tri) @ torch.tensor(cam.R, dtype=torch.float32).T
    normal = F.normalize(r.interpolate(n_cam, rast, tri), dim=-1)
    depth = r.interpolate(cam.to_camera(v)[:, 2:], rast, tri)[..., 0]
    return {"normal": normal, "depth": depth, "mask": rast.mask}


@register("sculpt", "reference_view")
class ReferenceViewSculpt:
    @dataclass(frozen=True)
    class Config:
        steps: int = setting(80, "optimization steps", ge=1, le=1_000_000)
        lr: float = setting(6e-4, "Adam learning rate on vertex positions (metres)", gt=0, le=1)
        resolution: int = setting(256, "render resolution of the reference view", ge=32, le=2048)
        w_mask: Schedule = setting(Schedule.parse(1.0), "silhouette MSE weight (number or [[step, value], ...])", ge=0)
        w_normal: Schedule = setting(Schedule.parse(0.5), "face normal (1 - cos) weight", ge=0)
        w_depth: Schedule = setting(Schedule.parse(0.2), "face depth negative-Pearson weight", ge=0)
        w_laplacian: Schedule = setting(Schedule.parse(2e4), "Laplacian smoothness weight", ge=0)
        w_symmetry: Schedule = setting(Schedule.parse(50.0), "left/right symmetry weight (skull only)", ge=0)
        face_mobility: float = setting(
            0.05,
            "how far face vertices may move relative to the rest (0: the landmark face stays as it is)",
            ge=0,
            le=1,
        )
        max_breadth: float = setting(
            1.15,
            "the sculpted head is at most this many times as wide as it is deep, as in init.max_breadth: on a side "
            "the sculpt makes wider, its moves go only that far (the silhouette loss pulls a side init held back "
            "toward the mask)",
            ge=0.5,
            le=3,
        )
        max_depth: float = setting(
            1.28,
            "the sculpted head is at most this many times as deep as it is wide, as in init.max_depth",
            ge=0.5,
            le=3,
        )

    def __init__(self, cfg: ReferenceViewSculpt.Config) -> None:
        self.cfg = cfg
        self.raster = get_rasterizer("torch")

    def close(self) -> None:
        pass

    def __call__(self, inputs: SculptInput, report: Reporter) -> SculptResult:
        cfg = self.cfg
        a, head = inputs.analysis, inputs.initial
        res = cfg.resolution
        cam = a.camera.resized(res)
        mask = torch.from_numpy(mask_coverage(a.head_mask, res))[..., None]
        known = torch.from_numpy(mask_coverage(a.photo_pixels(), res))[..., None]  # past the photo's edge: no loss
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
        first = last = {}
        for step in range(cfg.steps):
            report(step / cfg.steps, f"step {step + 1}/{cfg.steps}")
            v = v0 + delta * mobility
            pos = cam.clip(v.double()).float()
            rast = self.raster.rasterize(pos, tri, (res, res))
            sil = self.raster.antialias(rast.mask.float()[..., None], rast, pos, tri)
            l_mask = mask_mse(sil, mask, known)
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
            if step in (0, cfg.steps - 1):
                last = {
                    "step": step,
                    "loss": loss.item(),
                    "mask": l_mask.item(),
                    "normal": l_normal.item(),
                    "depth": l_depth.item(),
                }
                first = first or last
        v = (v0 + delta * mobility).detach().numpy()
        standing = standing_rotation(a.camera.center)
        v = limit_breadth(head.vertices, v, cfg.max_breadth, head.face_weight >= 0.5, standing)
        v = limit_depth(v, cfg.max_depth, standing)
        out = HeadMesh(
            vertices=v.astype(np.float32), faces=head.faces, mirror=head.mirror, face_weight=head.face_weight
        )
        return SculptResult(mesh=out, info={"first": first, "last": last})
