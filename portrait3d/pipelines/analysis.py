"""Stage 1, portrait analysis (``fast``: mediapipe + dlib, models that ship inside the wheels).

Face detection on the whole image (full-range model, the largest face when several), a square
head-and-shoulders crop around it, 478 landmarks on the crop, head pose and the reference camera,
a head mask (person segmentation cut at the neck), a canny map, and an identity embedding.

Example:
    >>> stage = MediapipeAnalysis(MediapipeAnalysis.Config())          # doctest: +SKIP
    >>> result = stage(load_image("photo.jpg"))                         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import ConfigError, FaceTooSmallError, NoFaceError
from .config import register
from .face_geometry import CHIN, FACE_SIDES, FOREHEAD, lift_landmarks
from .caption import TEMPLATE
from .identity import load_identity_encoder
from .image_io import DecodedImage
from .models.root import ModelRootSettings
from .types import PortraitAnalysis


@register("analysis", "mediapipe")
class MediapipeAnalysis:
    @dataclass
    class Config(ModelRootSettings):
        crop_size: int = field(default=512, metadata={"help": "side of the square crop, pixels"})
        crop_scale: float = field(default=2.6, metadata={"help": "crop side in face-box sides"})
        crop_shift: float = field(
            default=0.12, metadata={"help": "upward shift of the crop centre, in face-box heights"}
        )
        max_megapixels: float = field(
            default=50.0, metadata={"help": "largest input accepted (decompression-bomb guard)"}
        )
        min_face_px: int = field(default=64, metadata={"help": "smallest face (box side, input pixels) accepted"})
        detection_confidence: float = field(default=0.5, metadata={"help": "face detector threshold"})
        fovy_deg: float = field(
            default=20.0, metadata={"help": "vertical field of view of the reference camera over the crop"}
        )
        eye_width_m: float = field(
            default=0.09, metadata={"help": "prior on the outer eye-corner distance, metres (sets the scale)"}
        )
        head_center_depth: float = field(
            default=0.1, metadata={"help": "head centre behind the face's sides, in face widths"}
        )
        neck_length: float = field(
            default=0.45, metadata={"help": "neck kept below the chin in the head mask, in face heights"}
        )
        neck_width: float = field(default=0.8, metadata={"help": "neck width in the head mask, in face widths"})
        canny_low: int = field(default=60, metadata={"help": "canny lower threshold"})
        canny_high: int = field(default=150, metadata={"help": "canny upper threshold"})
        identity: str = field(
            default="dlib",
            metadata={
                "help": "identity encoder: 'dlib', 'arcface' (the model root's arcface role), or a path to an ArcFace .onnx"
            },
        )
        caption: str = field(
            default="",
            metadata={
                "help": "text describing the portrait (--caption); '' is the template 'a person'; 'model': the root's caption role; 'auto': that role when the root has it"
            },
        )

        def validate(self) -> None:
            if self.crop_size < 128 or self.crop_size > 2048:
                raise ConfigError("analysis.crop_size must be within [128, 2048]")
            if not 1.2 <= self.crop_scale <= 6:
                raise ConfigError("analysis.crop_scale must be within [1.2, 6]")
            if not 5 <= self.fovy_deg <= 90:
                raise ConfigError("analysis.fovy_deg must be within [5, 90]")

    def __init__(self, cfg: "MediapipeAnalysis.Config"):
        import mediapipe as mp

        self.cfg = cfg
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=cfg.detection_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        spec = cfg.identity
        root = None
        if spec == "arcface" or cfg.caption in ("model", "auto"):
            from .models import ModelRoot

            if not cfg.models:
                raise ConfigError(
                    f"analysis.identity={spec} / analysis.caption={cfg.caption} need a model root: --models ROOT"
                )
            root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        if spec == "arcface":
            spec = str(root.file("arcface", (".onnx",)))
        self.identity = load_identity_encoder(spec)
        self.captioner = None
        if cfg.caption == "model" or (cfg.caption == "auto" and root.has("caption")):
            from .caption import Captioner

            self.captioner = Captioner(root.folder("caption"))

    def close(self) -> None:
        for m in (self._detector, self._mesh, self._segmenter):
            m.close()

    def detect_faces(self, image: np.ndarray) -> list[tuple[float, tuple[float, float, float, float]]]:
        """``(H, W, 3)`` uint8 -> ``[(score, (x0, y0, x1, y1))]`` in pixels, largest first."""
        H, W = image.shape[:2]
        res = self._detector.process(np.ascontiguousarray(image))
        out = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            out.append((float(d.score[0]), (b.xmin * W, b.ymin * H, (b.xmin + b.width) * W, (b.ymin + b.height) * H)))
        out.sort(key=lambda s: -(s[1][2] - s[1][0]) * (s[1][3] - s[1][1]))
        return out

    def __call__(self, image: DecodedImage) -> PortraitAnalysis:
        cfg = self.cfg
        img = image.pixels
        H, W = img.shape[:2]
        faces = self.detect_faces(img)
        if not faces:
            raise NoFaceError(f"no face found in {image.source}")
        notes = []
        if len(faces) > 1:
            notes.append(f"{len(faces)} faces found; used the largest")
        score, (x0, y0, x1, y1) = faces[0]
        side = max(x1 - x0, y1 - y0)
        if side < cfg.min_face_px:
            raise FaceTooSmallError(
                f"the face in {image.source} is {side:.0f} px across; at least {cfg.min_face_px} px is needed"
            )

        S = cfg.crop_size
        crop_side = cfg.crop_scale * side
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - cfg.crop_shift * (y1 - y0)
        box = (cx - crop_side / 2, cy - crop_side / 2, cx + crop_side / 2, cy + crop_side / 2)
        scale = S / crop_side
        M = np.array([[scale, 0, -box[0] * scale], [0, scale, -box[1] * scale]])
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        crop = cv2.warpAffine(img, M, (S, S), flags=interp, borderMode=cv2.BORDER_REPLICATE)
        face_box = tuple(
            float(v)
            for v in ((x0 - box[0]) * scale, (y0 - box[1]) * scale, (x1 - box[0]) * scale, (y1 - box[1]) * scale)
        )

        res = self._mesh.process(crop)
        if not res.multi_face_landmarks:
            raise NoFaceError(f"a face was detected in {image.source} but its landmarks could not be found")
        lm = np.array([[p.x * S, p.y * S, p.z * S] for p in res.multi_face_landmarks[0].landmark])

        rot, ypr, cam, lm3d = lift_landmarks(lm, S, cfg.fovy_deg, cfg.eye_width_m, cfg.head_center_depth)
        person = self._segmenter.process(crop).segmentation_mask > 0.5
        mask = head_mask(person, lm, cfg.neck_length, cfg.neck_width)
        gray = cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (3, 3), 0)
        canny = cv2.Canny(gray, cfg.canny_low, cfg.canny_high)
        emb = self.identity.embed(crop, face_box)
        if emb is None:
            raise NoFaceError(f"the face in {image.source} could not be aligned for identity")
        return PortraitAnalysis(
            crop=crop,
            crop_box=box,
            image_size=(W, H),
            face_box=face_box,
            face_score=score,
            landmarks_px=lm,
            landmarks_3d=lm3d,
            rotation=rot,
            pose_ypr=ypr,
            camera=cam,
            head_mask=mask,
            canny=canny,
            identity=emb,
            identity_model=self.identity.name,
            input_sha256=image.sha256,
            notes=notes,
            caption=self.captioner(crop) if self.captioner else (cfg.caption.strip() or TEMPLATE),
        )


def head_mask(person: np.ndarray, lm_px: np.ndarray, neck_length: float, neck_width: float) -> np.ndarray:
    """Person mask ``(S, S)`` bool + landmarks -> head-and-neck mask ``(S, S)`` bool.

    Keeps the head (hair included) and a neck band under the chin; cuts shoulders and body.
    """
    S = person.shape[0]
    chin = lm_px[CHIN, :2]
    face_h = np.linalg.norm(lm_px[CHIN, :2] - lm_px[FOREHEAD, :2])
    face_w = np.linalg.norm(lm_px[FACE_SIDES[1], :2] - lm_px[FACE_SIDES[0], :2])
    # Work in the face's upright frame so that a tilted head is cut along its own neck.
    up = lm_px[FOREHEAD, :2] - chin
    up /= np.linalg.norm(up)
    right = np.array([-up[1], up[0]])
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    d = np.stack([xx + 0.5 - chin[0], yy + 0.5 - chin[1]], -1)
    along, across = d @ up, d @ right
    # Beside the neck, cut from jaw height (a fraction of the face above the chin tip): collars and
    # shoulders rise that high; the face itself is added back from its landmark hull below.
    below_chin = along < 0.2 * face_h
    band = (along > -neck_length * face_h) & (np.abs(across) < neck_width * face_w / 2)
    # Below the chin the person mask also holds collars and hair strands: open away what is much
    # thinner than a neck.
    kn = max(3, int(0.25 * face_w)) | 1
    neck = (
        cv2.morphologyEx(
            (person & band & below_chin).astype(np.uint8),
            cv2.MORPH_OPEN,
            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kn, kn)),
        )
        > 0
    )
    m = ((person & ~below_chin) | neck).astype(np.uint8)
    hull = cv2.convexHull(lm_px[:468, :2].astype(np.float32))
    cv2.fillConvexPoly(m, hull.astype(np.int32), 1)
    k = max(3, S // 100) | 1
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels = cv2.connectedComponents(m)
    face_label = labels[int(np.clip(lm_px[4, 1], 0, S - 1)), int(np.clip(lm_px[4, 0], 0, S - 1))]
    m = labels == face_label
    # Fill holes: draw the outer contour filled.
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros((S, S), np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)
