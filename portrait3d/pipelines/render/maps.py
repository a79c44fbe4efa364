"""Images of a mesh through a rasterizer, differentiable: normal, depth and silhouette maps
(:func:`render_geometry`) and the colour of a UV-textured mesh (:func:`sample_texture`).

Example:
    >>> import torch, trimesh
    >>> from portrait3d.pipelines.camera import Camera
    >>> from portrait3d.pipelines.render import get_rasterizer
    >>> s = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    >>> v, f = torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)
    >>> maps = render_geometry(get_rasterizer("torch"), Camera.orbit(0, 0, 0.5, 30, 32), v, f)
    >>> maps["image"].shape, bool(maps["mask"][16, 16])
    (torch.Size([3, 32, 32]), True)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import CV_TO_GL, Camera
from ..mesh import vertex_normals
from .base import Rasterizer

_GL = torch.tensor(CV_TO_GL, dtype=torch.float32)


def render_geometry(raster: Rasterizer, cam: Camera, v: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normal map and depth of a mesh at ``cam`` (its own size).

    Returns ``normal`` ``(H, W, 3)``: OpenGL camera-frame normals (x right, y up, z toward the viewer),
    zero on the background; ``image`` ``(3, H, W)`` in [0, 1], the normal map as an image
    (``n / 2 + 1 / 2``, black background, antialiased); ``mask`` ``(H, W)`` bool; ``silhouette``
    ``(H, W, 1)`` antialiased coverage; ``depth`` ``(H, W)`` camera depth (metres, 0 off the mesh).
    """
    pos = cam.clip(v.double()).float()
    rast = raster.rasterize(pos, f, (cam.height, cam.width))
    R = torch.as_tensor(cam.R, dtype=v.dtype, device=v.device)
    n_cam = vertex_normals(v, f) @ R.T @ _GL.to(v.device).T
    normal = F.normalize(raster.interpolate(n_cam, rast, f), dim=-1) * rast.mask[..., None]
    depth = raster.interpolate(cam.to_camera(v)[:, 2:], rast, f)[..., 0] * rast.mask
    cover = rast.mask.float()[..., None]
    both = raster.antialias(torch.cat([(normal * 0.5 + 0.5) * cover, cover], -1), rast, pos, f)
    return {
        "normal": normal,
        "image": both[..., :3].permute(2, 0, 1),
        "mask": rast.mask,
        "silhouette": both[..., 3:],
        "depth": depth,
    }


def bae_normal_image(normal: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """The normal ControlNet's input (``control_v11p_sd15_normalbae``, trained on BAE normal maps):
    OpenGL camera-frame ``normal (H, W, 3)`` with x flipped, so red points to the viewer's left, as
    ``n / 2 + 1 / 2`` over a background of a normal facing the viewer, (0.5, 0.5, 1), blended by the
    antialiased coverage ``cover (H, W, 1)``. Returns ``(3, H, W)`` in [0, 1]."""
    bae = normal * torch.tensor([-1.0, 1.0, 1.0], device=normal.device)
    background = torch.tensor([0.5, 0.5, 1.0], device=normal.device)
    img = torch.lerp(background.expand_as(bae), bae * 0.5 + 0.5, cover)
    return img.permute(2, 0, 1)


def normal_from_image(img: np.ndarray) -> np.ndarray:
    """Inverse of the normal map image of :func:`render_geometry`: ``(H, W, 3)`` uint8 -> unit
    normals ``(H, W, 3)`` float32."""
    n = img.astype(np.float32) / 127.5 - 1.0
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def sample_texture(
    raster: Rasterizer,
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
