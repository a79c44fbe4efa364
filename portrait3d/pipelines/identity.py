"""Identity encoders: a face crop -> an identity embedding.

- ``dlib``: dlib's ResNet 128-D face descriptor (ships in ``face-recognition-models``); two faces are
  the same person when the L2 distance is below 0.6.
- ArcFace: a 512-D ONNX model (insightface ``w600k_r50.onnx`` layout: input ``(1, 3, 112, 112)``,
  RGB normalised to [-1, 1]) loaded by path, e.g. from a model root; cosine distance.

Example:
    >>> enc = load_identity_encoder("dlib")
    >>> enc.dim
    128
"""

from __future__ import annotations

import abc
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, ModelError
from .resample import warp_affine_area

# ArcFace's 112x112 alignment template (insightface), for eye centres, nose tip, mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


class IdentityEncoder(abc.ABC):
    name: str
    dim: int
    same_person_below: float

    @abc.abstractmethod
    def embed(self, image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray | None:
        """``image (H, W, 3)`` uint8 RGB and the face's ``x0, y0, x1, y1`` -> ``(dim,)`` float32, or
        None when the face cannot be aligned."""

    @abc.abstractmethod
    def distance(self, a: np.ndarray, b: np.ndarray) -> float: ...


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib
    import face_recognition_models as frm

    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return dlib, sp, rec


class DlibFaceDescriptor(IdentityEncoder):
    name = "dlib_resnet_v1"
    dim = 128
    same_person_below = 0.6

    def __init__(self) -> None:
        self._dlib, self._sp, self._rec = _dlib_models()

    def embed(self, image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray | None:
        x0, y0, x1, y1 = (int(round(v)) for v in face_box)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        img = np.ascontiguousarray(image)
        shape = self._sp(img, self._dlib.rectangle(x0, y0, x1, y1))
        return np.asarray(self._rec.compute_face_descriptor(img, shape), dtype=np.float32)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


class ArcFaceOnnx(IdentityEncoder):
    """A 512-D ArcFace ONNX model. Alignment uses dlib's 5 landmarks of the face box."""

    name = "arcface_onnx"
    same_person_below = 0.6  # cosine distance; about 0.4 similarity

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"ArcFace model not found: {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("an ArcFace ONNX model needs onnxruntime: pip install onnxruntime") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"cannot load ArcFace model {path}: {e}") from None
        inp = self.session.get_inputs()[0]
        if list(inp.shape[1:]) != [3, 112, 112]:
            raise ModelError(f"{path}: expected an input of shape (N, 3, 112, 112), got {inp.shape}")
        self.input_name = inp.name
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.name = f"arcface_onnx:{path.name}"
        self._dlib, self._sp, _ = _dlib_models()

    def embed(self, image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray | None:
        x0, y0, x1, y1 = (int(round(v)) for v in face_box)
        shape = self._sp(np.ascontiguousarray(image), self._dlib.rectangle(x0, y0, x1, y1))
        p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)
        # dlib's 5 points: two corners of each eye (0-1, 2-3), nose base (4). Template order is
        # image-left eye, image-right eye, nose.
        eyes = sorted([p[0:2].mean(0), p[2:4].mean(0)], key=lambda e: e[0])
        src = np.stack([eyes[0], eyes[1], p[4]])
        M, _ = cv2.estimateAffinePartial2D(src, ARCFACE_TEMPLATE[:3])
        if M is None:
            return None
        face = warp_affine_area(image, M, (112, 112), upscale=cv2.INTER_LINEAR)
        x = ((face.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        out = self.session.run(None, {self.input_name: x})[0][0].astype(np.float32)
        return out / max(float(np.linalg.norm(out)), 1e-12)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(1 - a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def load_identity_encoder(spec: str) -> IdentityEncoder:
    """``"dlib"`` or the path of an ArcFace ``.onnx`` file."""
    if spec == "dlib":
        return DlibFaceDescriptor()
    if spec.endswith(".onnx"):
        return ArcFaceOnnx(spec)
    raise ConfigError(f"identity encoder must be 'dlib' or a path to an ArcFace .onnx file, got {spec!r}")
