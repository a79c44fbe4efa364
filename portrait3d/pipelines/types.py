"""Typed inputs and outputs of the stages: plain dataclasses of arrays, so that a stage runs the
same in-process, in a Ray actor, or behind a Serve deployment (``stage`` lists which stage takes
and gives which; ``codec`` turns them into bytes and back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Camera
from .image_io import DecodedImage


@dataclass
class PortraitAnalysis:
    """Stage 1 output. Image-space arrays are in the square crop's pixels (``S = crop.shape[0]``)."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB head-and-shoulders crop
    crop_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the input image's pixels
    image_size: tuple[int, int]  # input width, height
    face_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in crop pixels
    face_score: float
    landmarks_px: np.ndarray  # (478, 3) mediapipe landmarks: x, y in crop pixels, z in the same scale
    landmarks_3d: np.ndarray  # (478, 3) the same in the head frame, metres (a hidden side: mirrored, see analysis)
    rotation: np.ndarray  # (3, 3) head-to-camera rotation (camera axes x right, y up, z back)
    pose_ypr: tuple[float, float, float]  # yaw, pitch, roll in degrees
    camera: Camera  # the reference view: the crop is this camera's image of the head
    head_mask: np.ndarray  # (S, S) bool
    canny: np.ndarray  # (S, S) uint8 edge map
    identity: np.ndarray  # (D,) float32 identity embedding
    identity_model: str
    input_sha256: str = ""
    notes: list[str] = field(default_factory=list)
    caption: str = ""  # text describing the portrait (the diffusion models' condition)
    face_mask: np.ndarray | None = None  # (S, S) bool: the face without hair, ears, neck (face parsing or landmarks)
    in_photo: np.ndarray | None = None  # (S, S) bool: crop pixels on the photo; beyond its edge nothing is known

    def photo_pixels(self) -> np.ndarray:
        """``(S, S)`` bool: where the crop shows the photo (``in_photo``; everywhere when it is not given)."""
        S = self.crop.shape[0]
        return np.ones((S, S), bool) if self.in_photo is None else self.in_photo

    def record(self) -> dict[str, Any]:
        """The JSON-able part that goes into head.json."""
        return {
            "input_sha256": self.input_sha256,
            "image_size": list(self.image_size),
            "crop_box": [float(v) for v in self.crop_box],
            "crop_size": int(self.crop.shape[0]),
            "face_box": [float(v) for v in self.face_box],
            "face_score": float(self.face_score),
            "pose_deg": dict(zip(("yaw", "pitch", "roll"), (float(v) for v in self.pose_ypr), strict=True)),
            "reference_camera": self.camera.to_dict(),
            "landmarks_px": np.round(self.landmarks_px, 3).tolist(),
            "landmarks_3d": np.round(self.landmarks_3d, 6).tolist(),
            "identity_model": self.identity_model,
            "caption": self.caption,
            "notes": list(self.notes),
        }


@dataclass
class HeadMesh:
    """A closed triangle mesh of the head in the head frame (metres, +Y up, face toward +Z)."""

    vertices: np.ndarray  # (N, 3) float32
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    mirror: np.ndarray  # (N,) int64: index of each vertex's left/right mirror partner
    face_weight: np.ndarray  # (N,) float32 in [0, 1]: 1 on the face (landmark geometry)


@dataclass
class TexturedHead:
    mesh: HeadMesh
    uv: np.ndarray  # (M, 2) float32 per UV-vertex, in [0, 1], v up (glTF flips on export)
    uv_faces: np.ndarray  # (F, 3) int64 into uv
    uv_to_vertex: np.ndarray  # (M,) int64: the mesh vertex of each UV vertex
    texture: np.ndarray  # (T, T, 3) uint8, row 0 at v = 1
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class SculptResult:
    """Stage 4 output: the sculpted head and what the optimization reports (first/last losses, sizes)."""

    mesh: HeadMesh
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """Stage 6 output: the bundle's files as bytes (``head.glb``, ``head.json``, ``views.png``) and the
    record that ``head.json`` holds."""

    files: dict[str, bytes]
    record: dict[str, Any]

    def write(self, out: str | Path) -> dict[str, str]:
        """Into the local folder ``out``, atomically per file: ``{file name: path}``."""
        from .outputs import write_bundle

        return write_bundle(out, self.files)


@dataclass(frozen=True)
class AnalysisInput:
    image: DecodedImage
    face: str = ""  # which face, as ``analysis.face`` takes it; '': the stage's ``analysis.face``


@dataclass(frozen=True)
class InitInput:
    analysis: PortraitAnalysis


@dataclass(frozen=True)
class SculptInput:
    analysis: PortraitAnalysis
    initial: HeadMesh


@dataclass(frozen=True)
class TextureInput:
    analysis: PortraitAnalysis
    mesh: HeadMesh


@dataclass(frozen=True)
class ExportInput:
    """What the bundle is made of: the head, the analysis and sculpt records, the earlier stages'
    timings, and ``provenance`` (profile, resolved config and its fingerprint) from the pipeline."""

    analysis: PortraitAnalysis
    head: TexturedHead
    sculpt_info: dict[str, Any]
    timings: dict[str, float]
    provenance: dict[str, Any]
