"""Pinhole cameras.

Conventions (all stages, all outputs):
- World (head) frame: metres, +Y up, the face looking toward +Z, the head centred at the origin;
  +X is the person's left (the viewer's right in a frontal view). This is also glTF's frame.
- Camera frame: OpenCV (x right, y down, z forward). ``R``, ``t`` map world to camera:
  ``x_cam = R @ x_world + t``. Pixels: ``(u, v)`` with the centre of pixel ``(row i, col j)`` at
  ``(j + 0.5, i + 0.5)``.
- Clip space (for the rasterizer): NDC x = 2u/W - 1, NDC y = 2v/H - 1 (row 0 at y = -1, as in
  nvdiffrast's output layout), w = camera depth.

Example:
    >>> cam = Camera.orbit(yaw_deg=30, pitch_deg=0, distance=1.0, fovy_deg=28, size=256)
    >>> uv, z = cam.project(np.zeros((1, 3)))
    >>> np.allclose(uv, 128) and np.allclose(z, 1.0)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

# OpenGL/glTF camera axes (x right, y up, z back) from OpenCV ones (x right, y down, z forward).
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def rotation_ypr(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Head rotation ``(3, 3)``: yaw about +Y, then pitch about +X, then roll about +Z (R = Ry Rx Rz).

    Positive yaw turns the face toward +X (the person's left); positive pitch tilts it down.
    """
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


LEVEL_MAX_DEG = 30.0  # export's default: a head is turned by its photo camera's elevation, up to this


def leveling_rotation(eye: ArrayLike, max_deg: float) -> tuple[np.ndarray, float]:
    """``(3, 3)`` rotation about a horizontal axis through the origin that brings the point ``eye``
    ``(3,)`` down (or up) to elevation 0, turning by at most ``max_deg`` degrees. The axis is
    perpendicular to ``eye``'s horizontal direction, so its azimuth does not change; and the angle
    turned, degrees. Identity (0 degrees) when ``eye`` is on the vertical axis.

    Example:
        >>> L, deg = leveling_rotation([0.0, 0.1, 1.0], 30.0)
        >>> bool(abs((L @ [0.0, 0.1, 1.0])[1]) < 1e-12)
        True
    """
    from scipy.spatial.transform import Rotation

    eye = np.asarray(eye, dtype=np.float64)
    flat = np.array([eye[0], 0.0, eye[2]])
    axis = np.cross(eye, flat)
    if np.linalg.norm(flat) < 1e-12 or np.linalg.norm(axis) < 1e-12:
        return np.eye(3), 0.0
    elevation = math.atan2(abs(eye[1]), float(np.linalg.norm(flat)))
    angle = min(elevation, math.radians(max_deg))
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix(), math.degrees(angle)


def standing_rotation(eye: ArrayLike) -> np.ndarray:
    """``(3, 3)``: the head frame turned as the head stands in the exported head, export's default levelling
    for a camera at ``eye (3,)``."""
    return leveling_rotation(eye, LEVEL_MAX_DEG)[0]


def ypr_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_ypr` (degrees), for |pitch| < 90."""
    pitch = math.asin(float(np.clip(-rot[1, 2], -1.0, 1.0)))
    yaw = math.atan2(rot[0, 2], rot[2, 2])
    roll = math.atan2(rot[1, 0], rot[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: intrinsics ``K (3, 3)``, world-to-camera ``R (3, 3)``, ``t (3,)``, image size."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    near: float = 0.05
    far: float = 20.0

    @property
    def center(self) -> np.ndarray:
        """Camera position in world coordinates ``(3,)``."""
        return -self.R.T @ self.t

    @property
    def fovy_deg(self) -> float:
        return math.degrees(2 * math.atan(self.height / (2 * self.K[1, 1])))

    @staticmethod
    def intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
        f = height / (2 * math.tan(math.radians(fovy_deg) / 2))
        return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])

    @classmethod
    def look_at(
        cls, eye: ArrayLike, target: ArrayLike, up: ArrayLike, fovy_deg: float, width: int, height: int | None = None
    ) -> Camera:
        """Camera at ``eye`` looking at ``target`` with image-up along ``up`` (world vectors)."""
        height = width if height is None else height
        eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, up)
        if np.linalg.norm(right) < 1e-8:
            raise ValueError("look_at: up is parallel to the viewing direction")
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd])
        return cls(K=cls.intrinsics(fovy_deg, width, height), R=R, t=-R @ eye, width=width, height=height)

    @classmethod
    def orbit(
        cls,
        yaw_deg: float,
        pitch_deg: float,
        distance: float,
        fovy_deg: float,
        size: int,
        target: ArrayLike = (0.0, 0.0, 0.0),
    ) -> Camera:
        """Camera on a sphere around ``target``: yaw 0 looks at the face (from +Z), yaw +90 from +X
        (the person's left side), positive pitch from above."""
        y, p = math.radians(yaw_deg), math.radians(pitch_deg)
        d = np.array([math.sin(y) * math.cos(p), math.sin(p), math.cos(y) * math.cos(p)])
        target = np.asarray(target, dtype=np.float64)
        return cls.look_at(target + distance * d, target, (0.0, 1.0, 0.0), fovy_deg, size, size)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points ``(N, 3)`` -> pixels ``(N, 2)`` and camera depths ``(N,)``."""
        pc = points @ self.R.T + self.t
        z = pc[:, 2]
        uv = (pc @ self.K.T)[:, :2] / z[:, None]
        return uv, z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixels ``(N, 2)`` at camera depths ``(N,)`` -> world points ``(N, 3)``."""
        ones = np.ones((uv.shape[0], 1))
        rays = np.concatenate([uv, ones], 1) @ np.linalg.inv(self.K).T
        pc = rays * depth[:, None]
        return (pc - self.t) @ self.R

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``(N, 3)`` -> camera-frame points ``(N, 3)`` (torch, differentiable)."""
        R = torch.as_tensor(self.R, dtype=points.dtype, device=points.device)
        t = torch.as_tensor(self.t, dtype=points.dtype, device=points.device)
        return points @ R.T + t

    def projection_matrix(self) -> np.ndarray:
        """``(4, 4)`` matrix taking OpenCV camera coordinates to clip space (see module doc)."""
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        W, H, n, f = self.width, self.height, self.near, self.far
        return np.array(
            [
                [2 * fx / W, 0, 2 * cx / W - 1, 0],
                [0, 2 * fy / H, 2 * cy / H - 1, 0],
                [0, 0, (f + n) / (f - n), -2 * f * n / (f - n)],
                [0, 0, 1, 0],
            ]
        )

    def clip(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``(N, 3)`` -> clip coordinates ``(N, 4)`` (torch, differentiable)."""
        full = self.projection_matrix() @ np.vstack([np.hstack([self.R, self.t[:, None]]), [0, 0, 0, 1]])
        M = torch.as_tensor(full, dtype=points.dtype, device=points.device)
        homo = torch.cat([points, torch.ones_like(points[:, :1])], 1)
        return homo @ M.T

    def resized(self, size: int) -> Camera:
        """The same view at a square resolution ``size`` (the image must be square)."""
        s = size / self.width
        K = self.K.copy()
        K[:2] *= s
        return Camera(K=K, R=self.R, t=self.t, width=size, height=round(self.height * s), near=self.near, far=self.far)

    def to_dict(self) -> dict[str, Any]:
        """JSON record: OpenCV intrinsics/extrinsics plus the glTF camera-to-world matrix."""
        c2w_gl = np.eye(4)
        c2w_gl[:3, :3] = self.R.T @ CV_TO_GL
        c2w_gl[:3, 3] = self.center
        return {
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "fovy_deg": self.fovy_deg,
            "R_world_to_cv": self.R.tolist(),
            "t_world_to_cv": self.t.tolist(),
            "camera_to_world_gl": c2w_gl.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        return cls(
            K=np.array(d["K"]),
            R=np.array(d["R_world_to_cv"]),
            t=np.array(d["t_world_to_cv"]),
            width=int(d["width"]),
            height=int(d["height"]),
        )


def pixel_index(pix: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(P, 2)`` -> clamped (row, col) integer indices."""
    return (np.clip(pix[:, 1].astype(int), 0, height - 1), np.clip(pix[:, 0].astype(int), 0, width - 1))
