"""Render a textured head from any camera (for ``views.png``, evaluation and progressive inpainting).

Example:
    >>> img, mask = render_textured(head, Camera.orbit(30, 0, 1.1, 20, 256))   # doctest: +SKIP
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .camera import Camera
from .render import get_rasterizer
from .types import TexturedHead

VIEW_YAWS = (0, 30, -30, 60, -60, 90, -90, 180)


def render_textured(
    head: TexturedHead, cam: Camera, background: tuple[int, int, int] = (128, 128, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """-> image ``(H, W, 3)`` uint8 and coverage mask ``(H, W)`` bool (albedo, no lighting)."""
    r = get_rasterizer("torch")
    v = torch.tensor(head.mesh.vertices, dtype=torch.float64)
    rast = r.rasterize(cam.clip(v).float(), torch.tensor(head.mesh.faces), (cam.height, cam.width))
    uv = r.interpolate(torch.tensor(head.uv), rast, torch.tensor(head.uv_faces)).numpy()
    T = head.texture.shape[0]
    mx = (uv[..., 0] * T - 0.5).astype(np.float32)
    my = ((1 - uv[..., 1]) * T - 0.5).astype(np.float32)
    col = cv2.remap(head.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = rast.mask.numpy()
    out = np.where(mask[..., None], col, np.array(background, np.uint8)[None, None])
    return out.astype(np.uint8), mask


def orbit_views(
    head: TexturedHead,
    ref: Camera,
    size: int,
    yaws: tuple[int, ...] = VIEW_YAWS,
    background: tuple[int, int, int] = (128, 128, 128),
) -> list[tuple[int, np.ndarray]]:
    """Renders ``[(yaw, image)]`` around the head at the reference camera's distance and field of view."""
    dist = float(np.linalg.norm(ref.center))
    return [(y, render_textured(head, Camera.orbit(y, 0, dist, ref.fovy_deg, size), background)[0]) for y in yaws]


def contact_sheet(views: list[tuple[int, np.ndarray]], cols: int = 4) -> np.ndarray:
    """A grid image of the views, each labelled with its yaw."""
    tiles = []
    for yaw, img in views:
        t = img.copy()
        cv2.putText(t, f"yaw {yaw:+d}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 2, cv2.LINE_AA)
        tiles.append(t)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + cols], 1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, 0)
