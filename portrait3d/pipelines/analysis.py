"""Stage 1, portrait analysis (``fast``: mediapipe + dlib, models that ship inside the wheels).

Face detection on the whole image and on overlapping tiles of it (full-range model; the short-range
model where that finds none: a face that fills the photo; when several faces, the one ``face`` picks),
a square head-and-shoulders crop around it, 478 landmarks on the crop, head pose and the reference
camera, a head mask (the person segmentation of the one person the pose model segments, hands cut
out, within a head's reach of the face, cut at the neck, without the clothes beside the face:
:mod:`.clothes`), a canny map, and an identity embedding.

Example:
    >>> stage = MediapipeAnalysis(MediapipeAnalysis.Config())                       # doctest: +SKIP
    >>> result = stage(AnalysisInput(load_image("photo.jpg")), Reporter("analysis"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError, FaceTooSmallError, NoFaceError
from .camera import Camera
from .caption import TEMPLATE
from .clothes import look_like_clothes
from .face_geometry import (
    CHIN,
    FACE_SIDES,
    FOREHEAD,
    MESH_POINTS,
    NOSE_RIDGE,
    landmark_face_mask,
    lift_landmarks,
    mirror_hidden_side,
    mirror_past_edge,
    within_outline,
)
from .identity import load_identity_encoder
from .registry import register
from .resample import inside_photo, shrink_crop
from .settings import ModelRootSettings, setting
from .stage import Reporter
from .types import AnalysisInput, PortraitAnalysis

FACE_CHOICES = ("clearest", "largest", "most-confident", "central")
#: Beside the jaw, the head mask keeps only what runs up this far (face heights): hair does, collars do not.
COLLAR_RISE = 0.3
#: Clothes are cut from beside the face up to this height above the chin (face heights): a collar reaches the ear.
CLOTHES_TOP = 0.5
#: The shoulders (what the person wears) are the person's pixels this far below the chin (face heights).
SHOULDER_DROP = 0.5
#: Gaps narrower than this (face widths) between pieces of clothes beside the face are clothes too.
CLOTHES_CLOSE = 0.15
#: Clothes cut from the head mask in pieces smaller than this (face widths squared) stay: a sliver at the jaw is
#: not a wing, and cutting it only notches the outline.
MIN_WING = 0.02
#: A head mask that runs along the photo's edge (inside the crop) for more than this share of the crop's side is
#: cut there, and head.json says so: the head's shape and colour beyond the edge are the head prior's.
PAST_EDGE = 0.02
#: A person segmentation covering less than this share of the landmarks' face failed on the photo.
SEGMENTED_FACE = 0.5
SEGMENTER_MISSED_NOTE = (
    "the person segmentation missed the face; the head mask is the pose model's segmentation of the person"
)
PAST_EDGE_NOTE = "the head reaches past the photo's edge; its shape and colour there come from the head prior"

Detection = tuple[float, tuple[float, float, float, float]]


def choose_face(
    faces: list[Detection],
    how: str,
    width: int,
    height: int,
    source: str = "the photo",
    clarity: list[float] | None = None,
) -> Detection:
    """The face ``how`` picks among detections ``[(score, (x0, y0, x1, y1))]`` (pixels) in a
    ``width`` x ``height`` photo: ``clearest`` (the highest ``clarity``, one per face: :func:`hog_clarity`;
    the largest when none has one), ``largest`` (box area), ``most-confident``, ``central`` (box centre
    nearest the photo's centre) or a decimal index from the left. Raises NoFaceError when there is no
    face, or for an index past the last one.

    Example:
        >>> faces = [(0.9, (100, 0, 200, 100)), (0.95, (0, 0, 50, 50)), (0.8, (220, 120, 280, 180))]
        >>> [choose_face(faces, h, 400, 300)[0] for h in ("largest", "most-confident", "central", "0", "2")]
        [0.9, 0.95, 0.8, 0.95, 0.8]
        >>> [choose_face(faces, "clearest", 400, 300, clarity=c)[0] for c in ([0.1, -1.0, 1.3], None)]
        [0.8, 0.9]
    """
    if not faces:
        raise NoFaceError(f"no face found in {source}")
    if how.isdigit():
        by_left = faces_from_left(faces)
        if int(how) >= len(by_left):
            raise NoFaceError(
                f"face {how} (from 0, from the left) was asked for, but {source} has {len(faces)} face(s)"
            )
        return by_left[int(how)]
    if how == "clearest":
        if clarity is not None and max(clarity) > -np.inf:
            return faces[int(np.argmax(clarity))]
        how = "largest"
    keys = {
        "largest": lambda f: -box_area(f[1]),
        "most-confident": lambda f: -f[0],
        "central": lambda f: ((f[1][0] + f[1][2]) / 2 - width / 2) ** 2 + ((f[1][1] + f[1][3]) / 2 - height / 2) ** 2,
    }
    return min(faces, key=keys[how])


def hog_clarity(image: np.ndarray, faces: list[Detection]) -> list[float]:
    """How clearly each detected face shows as a frontal face: the highest score dlib's frontal HOG
    detector gives a face overlapping its box (:data:`SAME_FACE`), -inf for none, with the photo ``(H, W, 3)``
    shrunk to at most :data:`HOG_SIDE` px (dlib upsamples it once, twice when it finds no face)."""
    s = min(1.0, HOG_SIDE / max(image.shape[:2]))
    small = image if s == 1.0 else cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    det = dlib_hog()
    rects, scores, _ = det.run(np.ascontiguousarray(small), 1, 0.0)
    if not rects:
        rects, scores, _ = det.run(np.ascontiguousarray(small), 2, 0.0)
    hog = [
        ((r.left() / s, r.top() / s, r.right() / s, r.bottom() / s), sc) for r, sc in zip(rects, scores, strict=True)
    ]
    return [max((sc for b, sc in hog if box_overlap(b, f[1]) >= SAME_FACE), default=-np.inf) for f in faces]


def dlib_hog():
    """dlib's frontal HOG face detector (``det(image, upsample)``, ``det.run(image, upsample, threshold)``)."""
    import dlib

    return dlib.get_frontal_face_detector()


def faces_from_left(faces: list[Detection]) -> list[Detection]:
    """Detections ordered by their box centre, left to right (then top to bottom): ``analysis.face=N``'s order."""
    return sorted(faces, key=lambda f: (f[1][0] + f[1][2], f[1][1] + f[1][3]))


TILE_OVERLAP = 0.3  # each tile is this much wider (and taller) than a 1/N share of the photo
HOG_SIDE = 1024  # the photo's longer side, at most, when dlib's HOG detector rates how clear each face is
SAME_FACE = 0.5  # boxes whose intersection covers this share of the smaller one are one face
WRIST, HAND_TIPS = 0, [4, 8, 12, 16, 20]  # mediapipe hand landmarks


def tile_boxes(width: int, height: int, n: int) -> list[tuple[int, int, int, int]]:
    """``n x n`` overlapping tiles ``(x0, y0, x1, y1)`` covering a ``width`` x ``height`` photo, each
    ``1 + TILE_OVERLAP`` times a 1/n share of it per side, spread evenly from edge to edge; none for n = 1.

    Example:
        >>> tile_boxes(100, 60, 2)
        [(0, 0, 65, 39), (0, 21, 65, 60), (35, 0, 100, 39), (35, 21, 100, 60)]
    """
    if n <= 1:
        return []
    tw, th = min(width, round(width / n * (1 + TILE_OVERLAP))), min(height, round(height / n * (1 + TILE_OVERLAP)))
    xs = [round(i * (width - tw) / (n - 1)) for i in range(n)]
    ys = [round(j * (height - th) / (n - 1)) for j in range(n)]
    return [(x, y, x + tw, y + th) for x in xs for y in ys]


def box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of boxes ``(x0, y0, x1, y1)`` over the smaller one's area (1: one holds the other).

    Example:
        >>> box_overlap((0, 0, 10, 10), (5, 0, 10, 5)), box_overlap((0, 0, 10, 10), (20, 20, 30, 30))
        (1.0, 0.0)
    """
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / max(min(box_area(a), box_area(b)), 1e-9)


def box_side(b: tuple[float, ...]) -> float:
    """The longer side of a box ``(x0, y0, x1, y1)``: a face's size, as ``analysis.min_face_px`` takes it."""
    return max(b[2] - b[0], b[3] - b[1])


def box_area(b: tuple[float, ...]) -> float:
    """Area of a box ``(x0, y0, x1, y1)``."""
    return (b[2] - b[0]) * (b[3] - b[1])


def check_face_choice(how: str, what: str = "analysis.face") -> str:
    """``how`` when ``analysis.face`` takes it (a word of ``FACE_CHOICES`` or an index), else a ConfigError
    naming ``what`` gave it."""
    if how not in FACE_CHOICES and not how.isdigit():
        raise ConfigError(f"{what} = {how!r}: use {', '.join(FACE_CHOICES)}, or a face's index from the left")
    return how


def describe_choice(how: str) -> str:
    """``'largest'`` -> ``'the largest'``; ``'2'`` -> ``'face 2 from the left (from 0)'`` (for head.json notes)."""
    return f"face {how} from the left (from 0)" if how.isdigit() else "the " + how.replace("-", " ")


@register("analysis", "mediapipe")
class MediapipeAnalysis:
    @dataclass(frozen=True)
    class Config(ModelRootSettings):
        crop_size: int = setting(512, "side of the square crop, pixels", ge=128, le=2048)
        crop_scale: float = setting(2.6, "crop side in face-box sides", ge=1.2, le=6)
        crop_shift: float = setting(0.12, "upward shift of the crop centre, in face-box heights", ge=-1, le=1)
        max_megapixels: float = setting(50.0, "largest input accepted (decompression-bomb guard)", gt=0, le=1000)
        min_face_px: int = setting(32, "smallest face (box side, input pixels) accepted", ge=8, le=4096)
        small_face_px: int = setting(
            64, "faces smaller than this are accepted with a note that the head has little detail", ge=8, le=4096
        )
        detection_confidence: float = setting(0.5, "face detector threshold", ge=0, le=1)
        face_tiles: int = setting(
            2,
            "also look for faces in N x N overlapping tiles of the photo: in a group photo the whole-photo pass "
            "misses the smaller faces (1: the whole photo only)",
            ge=1,
            le=8,
        )
        face: str = setting(
            "clearest",
            "which face when the photo has several: 'clearest' (the most clearly frontal: dlib's frontal HOG "
            "detector's top score, the face a one-photo head is best made of), 'largest', 'most-confident' "
            "(mediapipe's top score), 'central' (nearest the photo's centre), or N (the N-th from the left, from 0)",
        )
        fovy_deg: float = setting(20.0, "vertical field of view of the reference camera over the crop", ge=5, le=90)
        eye_width_m: float = setting(
            0.09, "prior on the outer eye-corner distance, metres (sets the scale)", gt=0, le=0.5
        )
        depth_scale: float = setting(
            0.85,
            "mediapipe's relative landmark depth is multiplied by this (at 1.0 faces came out 1.1-1.3x deeper "
            "than mediapipe's own metric canonical face: nose, chin and forehead against the eye corners)",
            gt=0,
            le=2,
        )
        head_center_depth: float = setting(0.1, "head centre behind the face's sides, in face widths", ge=0, le=3)
        mirror_hidden_side: bool = setting(
            True,
            "the face's side turned away from the camera takes the mirrored shape of the side facing it, by how "
            "much better that side faces it (mediapipe pulls a hidden side's outline onto the silhouette)",
        )
        face_within_outline: bool = setting(
            True,
            "the 3D face is moved back inside the head mask where its reference-view projection reaches past it "
            "(a turned face's mirrored far cheek can be wider than the photo's outline)",
        )
        neck_length: float = setting(0.45, "neck kept below the chin in the head mask, in face heights", ge=0, le=3)
        neck_width: float = setting(0.8, "neck width in the head mask, in face widths", gt=0, le=5)
        remove_hands: bool = setting(True, "cut hands (mediapipe's hand landmarks, with a margin) out of the head mask")
        hand_confidence: float = setting(
            0.3,
            "mediapipe's palm detection score from which a hand is cut: a hand holding cards or cut by the "
            "photo's edge scores low",
            gt=0,
            le=1,
        )
        held_reach: float = setting(
            1.0,
            "below the chin, the hand cut also reaches this many hand sizes from the wrist toward the fingertips, "
            "over what the hand holds in front of the neck (cards, a cup; 0: the hand alone)",
            ge=0,
            le=3,
        )
        one_person: bool = setting(
            True,
            "keep only the person mediapipe's pose model segments (other people's arms and bodies beside the "
            "head are cut); without a pose found, the person segmentation alone",
        )
        cut_clothes: bool = setting(
            True,
            "cut from beside the face, up to the ears, what has the colours of the shoulders and not of the "
            "face or the hair: a collar or shoulder risen beside a tilted head (it made a wing of shirt)",
        )
        head_halfwidth: float = setting(
            1.0,
            "the head mask reaches at most this far to each side of the face's midline, in face widths "
            "(arms, hands and neighbours beside the head are cut)",
            gt=0,
            le=5,
        )
        head_top: float = setting(
            1.0, "the head mask reaches at most this far above the forehead, in face heights", gt=0, le=5
        )
        canny_low: int = setting(60, "canny lower threshold", ge=0, le=1000)
        canny_high: int = setting(150, "canny upper threshold", ge=0, le=1000)
        identity: str = setting(
            "dlib", "identity encoder: 'dlib', 'arcface' (the model root's arcface role), or a path to an ArcFace .onnx"
        )
        caption: str = setting(
            "",
            "text describing the portrait (--caption); '' is the template 'a person'; "
            "'model': the root's caption role; 'auto': that role when the root has it",
        )
        face_parsing: str = setting(
            "auto",
            "face and head masks from the root's face_parsing role: 'auto' (when the root has one), 'model' "
            "(required), 'none' (the landmark hull and person segmentation)",
            choices=("auto", "model", "none"),
        )
        parsing_agreement: float = setting(
            0.6,
            "a parsed face mask must cover this share of the landmarks' face hull, else the landmark masks are used",
            ge=0,
            le=1,
        )

        def validate(self) -> None:
            check_face_choice(self.face)
            if self.canny_low > self.canny_high:
                raise ConfigError("analysis.canny_low must not exceed analysis.canny_high")
            if self.identity not in ("dlib", "arcface") and not self.identity.lower().endswith(".onnx"):
                raise ConfigError(
                    f"analysis.identity = {self.identity!r}: use dlib, arcface, or the path of an ArcFace .onnx file"
                )
            if (
                self.identity == "arcface" or self.caption == "model" or self.face_parsing == "model"
            ) and not self.models:
                raise ConfigError(
                    f"analysis.identity={self.identity} / analysis.caption={self.caption} / "
                    f"analysis.face_parsing={self.face_parsing} need a model root: --models ROOT"
                )

    def __init__(self, cfg: MediapipeAnalysis.Config) -> None:
        import mediapipe as mp

        self.cfg = cfg
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=cfg.detection_confidence
        )
        self._near_detector = mp.solutions.face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=cfg.detection_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._pose = (
            mp.solutions.pose.Pose(
                static_image_mode=True, enable_segmentation=True, model_complexity=1, min_detection_confidence=0.3
            )
            if cfg.one_person
            else None
        )
        self._hands = (
            mp.solutions.hands.Hands(
                static_image_mode=True, max_num_hands=4, min_detection_confidence=cfg.hand_confidence
            )
            if cfg.remove_hands
            else None
        )
        spec = cfg.identity
        root = None
        wants_root = spec == "arcface" or "model" in (cfg.caption, cfg.face_parsing)
        if wants_root or (cfg.models and "auto" in (cfg.caption, cfg.face_parsing)):
            from .models import ModelRoot

            root = ModelRoot(cfg.models, allow_pickle=cfg.allow_pickle)
        if spec == "arcface":
            spec = str(root.file("arcface", (".onnx",)))
        self.identity = load_identity_encoder(spec)
        self.captioner = None
        if cfg.caption == "model" or (cfg.caption == "auto" and root is not None and root.has("caption")):
            from .caption import Captioner

            self.captioner = Captioner(root.folder("caption"))
        self.parser = None
        if cfg.face_parsing == "model" or (
            cfg.face_parsing == "auto" and root is not None and root.has("face_parsing")
        ):
            from .face_parsing import FaceParser

            self.parser = FaceParser(root.folder("face_parsing"))

    def close(self) -> None:
        for m in (self._detector, self._near_detector, self._mesh, self._segmenter, self._pose, self._hands):
            if m is not None:
                m.close()

    def detect_faces(self, image: np.ndarray, tiles: int = 1) -> list[Detection]:
        """``(H, W, 3)`` uint8 -> ``[(score, (x0, y0, x1, y1))]`` in pixels, largest first. With ``tiles > 1``
        also in ``tiles x tiles`` overlapping tiles (:func:`tile_boxes`): a face found there that overlaps
        one found already (:data:`SAME_FACE`) is the same face and is dropped."""
        found = self._detect(self._detector, image, 0, 0)
        for x0, y0, x1, y1 in tile_boxes(image.shape[1], image.shape[0], tiles):
            for face in self._detect(self._detector, image[y0:y1, x0:x1], x0, y0):
                if all(box_overlap(face[1], f[1]) < SAME_FACE for f in found):
                    found.append(face)
        found.sort(key=lambda f: -box_area(f[1]))
        return found

    def faces_in_photo(self, image: np.ndarray, tiles: int = 1) -> tuple[list[Detection], bool]:
        """:meth:`detect_faces` in a photo ``(H, W, 3)``; where it finds none, the faces of mediapipe's
        short-range model, and whether they are those. A face that fills the photo (a tight crop) is too near
        for the full-range model, and what the short-range one is made for; tried first, the short-range
        model would miss the small faces of a wider photo."""
        found = self.detect_faces(image, tiles)
        if found:
            return found, False
        return sorted(self._detect(self._near_detector, image, 0, 0), key=lambda f: -box_area(f[1])), True

    def pick_face(self, image: np.ndarray, faces: list[Detection], how: str, source: str) -> tuple[Detection, str]:
        """:func:`choose_face` on the photo ``(H, W, 3)``, rating how clear each face is when ``how`` asks;
        and how it chose (``largest`` for ``clearest`` when dlib finds none of the faces)."""
        clarity = hog_clarity(image, faces) if how == "clearest" and len(faces) > 1 else None
        if clarity is not None and max(clarity) == -np.inf:
            how = "largest"
        return choose_face(faces, how, image.shape[1], image.shape[0], source, clarity), how

    @staticmethod
    def _detect(detector: Any, image: np.ndarray, x0: int, y0: int) -> list[Detection]:
        """Faces the mediapipe ``detector`` finds in ``image``, their boxes shifted by ``(x0, y0)``."""
        H, W = image.shape[:2]
        out = []
        for d in detector.process(np.ascontiguousarray(image)).detections or []:
            b = d.location_data.relative_bounding_box
            box = (x0 + b.xmin * W, y0 + b.ymin * H, x0 + (b.xmin + b.width) * W, y0 + (b.ymin + b.height) * H)
            out.append((float(d.score[0]), box))
        return out

    def __call__(self, inputs: AnalysisInput, report: Reporter) -> PortraitAnalysis:
        cfg = self.cfg
        image = inputs.image
        img = image.pixels
        H, W = img.shape[:2]
        faces, near = self.faces_in_photo(img, cfg.face_tiles)
        notes = ["the face fills the photo: found by the short-range face detector"] if near and faces else []
        how = check_face_choice(inputs.face, f"the face asked for {image.source}") if inputs.face else cfg.face
        (score, (x0, y0, x1, y1)), how = self.pick_face(img, faces, how, image.source)
        if len(faces) > 1 or inputs.face:
            notes.append(f"{len(faces)} face{'s' * (len(faces) > 1)} found; used {describe_choice(how)}")
        side = box_side((x0, y0, x1, y1))
        if side < cfg.min_face_px:
            raise FaceTooSmallError(
                f"the face in {image.source} is {side:.0f} px across; at least {cfg.min_face_px} px is needed"
            )

        S = cfg.crop_size
        crop_side = cfg.crop_scale * side
        if side < cfg.small_face_px:
            notes.append(
                f"small face: {side:.0f} px across in the photo, upscaled x{S / crop_side:.1f} into the "
                f"{S} px crop; the head has no more detail than the photo"
            )
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - cfg.crop_shift * (y1 - y0)
        box = (cx - crop_side / 2, cy - crop_side / 2, cx + crop_side / 2, cy + crop_side / 2)
        scale = S / crop_side
        if scale < 1:  # a large photo: whole source pixels, each crop pixel their mean (no aliasing)
            bx, by, side_px = round(box[0]), round(box[1]), round(crop_side)
            box, scale = (bx, by, bx + side_px, by + side_px), S / side_px
            crop = shrink_crop(img, bx, by, side_px, S)
        else:
            M = np.array([[scale, 0, -box[0] * scale], [0, scale, -box[1] * scale]])
            crop = cv2.warpAffine(img, M, (S, S), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        face_box = tuple(
            float(v)
            for v in ((x0 - box[0]) * scale, (y0 - box[1]) * scale, (x1 - box[0]) * scale, (y1 - box[1]) * scale)
        )

        report(0.2, "face found")
        res = self._mesh.process(crop)
        if not res.multi_face_landmarks:
            raise NoFaceError(f"a face was detected in {image.source} but its landmarks could not be found")
        lm = np.array([[p.x * S, p.y * S, p.z * S] for p in res.multi_face_landmarks[0].landmark])

        report(0.4, "landmarks")
        rot, ypr, cam, lm3d = lift_landmarks(
            lm, S, cfg.fovy_deg, cfg.eye_width_m, cfg.head_center_depth, cfg.depth_scale
        )
        if cfg.mirror_hidden_side:
            lm3d = mirror_hidden_side(lm3d, cam)
        face = landmark_face_mask(lm, S)
        person = self.person_mask(crop, face, notes)
        if self.parser is not None:
            parsed_face, parsed_head = self.parse(crop)
            if (parsed_face & face).sum() >= cfg.parsing_agreement * face.sum():
                face, person = parsed_face, parsed_head
            else:
                notes.append("face parsing disagreed with the landmarks; the masks come from the landmarks")
        axis = head_axis_px(cam, lm3d)
        clutter = ~head_bounds(lm, S, cfg.head_halfwidth, cfg.head_top, axis)
        if self._hands is not None:  # on the whole photo: a hand at the crop's edge is found there
            hands = [(h - box[:2]) * scale for h in self.hands(img)]
            clutter |= hand_regions(hands, S, reach=cfg.held_reach, below=float(lm[CHIN, 1]))
        clutter &= ~face  # a hand in front of the face still leaves the face
        mask = head_mask(person & ~clutter, lm, cfg.neck_length, cfg.neck_width, axis)
        clothes = clothes_beside_face(crop, person, lm, axis, cfg.neck_width) if cfg.cut_clothes else None
        if clothes is not None and clothes.any():  # without any, the second head mask would be the first
            trimmed = head_mask(person & ~(clutter | clothes), lm, cfg.neck_length, cfg.neck_width, axis)
            mask &= ~wings(mask & ~trimmed, MIN_WING * axis.face_w**2)
        in_photo = inside_photo(box, S, W, H)
        if (mask & photo_edge(in_photo)).sum() > PAST_EDGE * S:
            notes.append(PAST_EDGE_NOTE)
        mask &= in_photo
        # Never inside mediapipe's own outline, whatever the mask missed; past the photo's edge is no outline.
        if cfg.face_within_outline:
            lm3d = within_outline(lm3d, cam, mask | landmark_face_mask(lm, S) | ~in_photo)
        lm3d = mirror_past_edge(lm3d, lm, in_photo)
        gray = cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (3, 3), 0)
        canny = cv2.Canny(gray, cfg.canny_low, cfg.canny_high)
        report(0.6, "head mask")
        emb = self.identity.embed(crop, face_box)
        if emb is None:
            raise NoFaceError(f"the face in {image.source} could not be aligned for identity")
        report(0.8, "identity")
        text = "" if cfg.caption in ("auto", "model") else cfg.caption.strip()
        caption = self.captioner(crop) if self.captioner else (text or TEMPLATE)
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
            caption=caption,
            face_mask=face & mask,
            in_photo=in_photo,
        )

    def person_mask(self, crop: np.ndarray, face: np.ndarray, notes: list[str]) -> np.ndarray:
        """``(S, S)`` bool: the person segmentation, trimmed to the one person the pose model segments (grown
        by 2% of the crop, so that it trims other people, not this one's hair; untrimmed where the pose model
        finds no one). Where the person segmentation misses the landmarks' ``face`` (``(S, S)`` bool) it
        failed on this photo (a face filling a tight crop): the pose model's person is the mask, and
        ``notes`` say so."""
        person = self._segmenter.process(crop).segmentation_mask > 0.5
        seg = self._pose.process(crop).segmentation_mask if self._pose is not None else None
        if seg is None:
            return person
        this = seg > 0.5
        if (person & face).sum() < SEGMENTED_FACE * face.sum():
            notes.append(SEGMENTER_MISSED_NOTE)
            return this
        k = max(3, crop.shape[0] // 50) | 1
        return person & (cv2.dilate(this.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0)

    def hands(self, image: np.ndarray) -> list[np.ndarray]:
        """Each hand mediapipe finds in ``image (H, W, 3)``: its 21 landmarks ``(21, 2)`` in pixels."""
        H, W = image.shape[:2]
        res = self._hands.process(np.ascontiguousarray(image))
        return [np.array([[p.x * W, p.y * H] for p in h.landmark]) for h in res.multi_hand_landmarks or []]

    def parse(self, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face mask, head mask) of the crop by the face-parsing role."""
        from .face_parsing import parsed_masks

        return parsed_masks(self.parser(crop), self.parser.names)


def hand_regions(
    hands: list[np.ndarray], size: int, margin: float = 0.25, reach: float = 0.0, below: float = 0.0
) -> np.ndarray:
    """``(S, S)`` bool: each hand's ``(21, 2)`` landmark hull grown by ``margin`` of the hand's size (fingers
    beyond the landmarks), and, in the rows from ``below`` down, swept ``reach`` hand sizes from the wrist
    toward the fingertips (what the hand holds: cards, a cup, a chip in front of the neck).

    Example:
        >>> hand = np.zeros((21, 2)); hand[:, 0] = 50; hand[:, 1] = np.linspace(80, 60, 21)  # fingers up
        >>> m = hand_regions([hand], 128, margin=0.0, reach=1.0, below=45)
        >>> bool(m[70, 50]), bool(m[50, 50]), bool(m[40, 50])   # the hand, what it holds, above `below`
        (True, True, False)
    """
    m = np.zeros((size, size), bool)
    for pts in hands:
        extent = float(np.ptp(pts, axis=0).max())
        m |= _hull_grown(pts, size, max(1, int(margin * extent)))
        if reach > 0:
            toward = pts[HAND_TIPS].mean(0) - pts[WRIST]
            toward = toward / max(float(np.linalg.norm(toward)), 1e-6)
            swept = _hull_grown(np.concatenate([pts, pts + reach * extent * toward]), size, 0)
            swept[: max(0, int(np.ceil(below)))] = False
            m |= swept
    return m


def _hull_grown(pts: np.ndarray, size: int, grow: int) -> np.ndarray:
    one = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(one, np.round(cv2.convexHull(pts.astype(np.float32))).astype(np.int32), 1)
    if grow > 0:
        one = cv2.dilate(one, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    return one > 0


@dataclass(frozen=True)
class HeadAxis:
    """Where the head's vertical axis lies in the crop: the head centre and the neck axis at the chin's
    height ``(2,)`` each, pixels, and the face's width at the centre's depth, pixels. In a turned head
    they are beside the face's midline and chin, toward the back of the head."""

    center: np.ndarray
    neck: np.ndarray
    face_w: float


def head_axis_px(cam: Camera, lm3d: np.ndarray) -> HeadAxis:
    """The reference camera and the 3D landmarks ``(478, 3)`` (head frame, centre at the origin, y up) ->
    :class:`HeadAxis` in the camera's image.

    Example:
        >>> lm = np.zeros((478, 3)); lm[FACE_SIDES[0], 0], lm[FACE_SIDES[1], 0], lm[CHIN, 1] = -0.07, 0.07, -0.1
        >>> cam = Camera.orbit(90, 0, 1.0, 30, 256)  # from the person's left
        >>> a = head_axis_px(cam, lm)
        >>> np.round(a.center, 1).tolist(), np.round(a.neck, 1).tolist(), round(a.face_w, 1)
        ([128.0, 128.0], [128.0, 175.8], 66.9)
    """
    uv, z = cam.project(np.array([[0.0, 0.0, 0.0], [0.0, float(lm3d[CHIN, 1]), 0.0]]))
    fw = float(np.linalg.norm(lm3d[FACE_SIDES[1]] - lm3d[FACE_SIDES[0]]))
    return HeadAxis(center=uv[0], neck=uv[1], face_w=fw * float(cam.K[1, 1]) / float(z[0]))


def clothes_beside_face(
    crop: np.ndarray, person: np.ndarray, lm_px: np.ndarray, axis: HeadAxis, neck_width: float
) -> np.ndarray:
    """``(S, S)`` bool: the ``person`` pixels beside the face, outside the neck band and up to ``CLOTHES_TOP``
    face heights above the chin, that look like clothes (:func:`look_like_clothes`). The shoulders are the
    person's pixels ``SHOULDER_DROP`` face heights below the chin outside the neck band; the head is the
    landmarks' face hull and the person's pixels above the forehead."""
    S = person.shape[0]
    along, _, _, face_h = upright_frame(lm_px, S, lm_px[CHIN, :2])
    _, across, _, _ = upright_frame(lm_px, S, axis.neck)
    band = np.abs(across) < neck_width * axis.face_w / 2
    face = landmark_face_mask(lm_px, S)
    zone = person & ~face & ~band & (along < CLOTHES_TOP * face_h)
    shoulders = person & ~band & (along < -SHOULDER_DROP * face_h)
    head = face | (person & (along > face_h))
    cut = look_like_clothes(crop, zone, shoulders, head).astype(np.uint8)
    # A shirt's folds and shadows take the head's colours here and there: close the gaps between its pieces.
    k = max(3, int(CLOTHES_CLOSE * axis.face_w)) | 1
    return (cv2.morphologyEx(cut, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0) & zone


def wings(removed: np.ndarray, min_area: float) -> np.ndarray:
    """The connected pieces of ``removed (S, S)`` bool of at least ``min_area`` pixels.

    Example:
        >>> r = np.zeros((20, 20), bool); r[0:2, 0:2] = True; r[10:16, 10:16] = True
        >>> int(wings(r, 10).sum())
        36
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(removed.astype(np.uint8))
    big = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area)
    return np.isin(labels, big[big > 0])


def head_bounds(lm_px: np.ndarray, size: int, halfwidth: float, top: float, axis: HeadAxis) -> np.ndarray:
    """``(S, S)`` bool: where a head can be, in the face's upright frame: below ``top`` face heights above
    the forehead, and within ``halfwidth`` face widths of the head's axis from mid-face up, narrowing
    to 0.75 of that at the chin (a jaw with its hair is narrower than a cranium with its hair)."""
    along, _, _, face_h = upright_frame(lm_px, size, lm_px[CHIN, :2])
    _, across, _, _ = upright_frame(lm_px, size, axis.center)
    taper = np.clip(0.75 + 0.5 * along / face_h, 0.75, 1.0)
    return (np.abs(across) <= taper * halfwidth * axis.face_w) & (along <= (1 + top) * face_h)


def photo_edge(in_photo: np.ndarray) -> np.ndarray:
    """``(S, S)`` bool: the photo's outermost pixels in the crop, beside pixels past its edge (``in_photo``
    false); the crop's own border is not the photo's edge.

    Example:
        >>> inside = np.zeros((4, 4), bool); inside[1:, :3] = True
        >>> photo_edge(inside).astype(int).tolist()
        [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    """
    return in_photo & ~cv2.erode(in_photo.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def upright_frame(lm_px: np.ndarray, size: int, origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every pixel's coordinates in the face's upright frame from ``origin``: (along the chin-to-forehead
    axis, across it) ``(S, S)`` each, pixels, and the face's width and height."""
    chin, forehead = lm_px[CHIN, :2], lm_px[FOREHEAD, :2]
    face_h = float(np.linalg.norm(forehead - chin))
    face_w = float(np.linalg.norm(lm_px[FACE_SIDES[1], :2] - lm_px[FACE_SIDES[0], :2]))
    up = (forehead - chin) / face_h
    right = np.array([-up[1], up[0]])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.stack([xx + 0.5 - origin[0], yy + 0.5 - origin[1]], -1)
    return d @ up, d @ right, face_w, face_h


def head_mask(
    person: np.ndarray, lm_px: np.ndarray, neck_length: float, neck_width: float, axis: HeadAxis
) -> np.ndarray:
    """Person mask ``(S, S)`` bool + landmarks -> head-and-neck mask ``(S, S)`` bool.

    Keeps the head (hair included) and a neck band about the head's axis (under the chin in a frontal
    face, under the ear in a profile); cuts shoulders and body.
    """
    S = person.shape[0]
    # Work in the face's upright frame so that a tilted head is cut along its own neck.
    along, _, _, face_h = upright_frame(lm_px, S, lm_px[CHIN, :2])
    _, across, _, _ = upright_frame(lm_px, S, axis.neck)
    face_w = axis.face_w
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
    # Beside the jaw, a collar or shoulder that rises just above the cut is left as a flat flap; hair hanging
    # beside the jaw runs on up to the head. Keep there only what has a vertical run of COLLAR_RISE (a collar
    # that reaches the ear stays).
    rise = max(3, int(COLLAR_RISE * face_h)) | 1
    tall = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((rise, 1), np.uint8))
    beside_jaw = ~below_chin & (along < 0.2 * face_h + rise) & ~band
    m = np.where(beside_jaw, tall, m).astype(np.uint8)
    hull = cv2.convexHull(lm_px[:MESH_POINTS, :2].astype(np.float32))
    cv2.fillConvexPoly(m, hull.astype(np.int32), 1)
    k = max(3, S // 100) | 1
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels = cv2.connectedComponents(m)
    face_label = labels[int(np.clip(lm_px[NOSE_RIDGE, 1], 0, S - 1)), int(np.clip(lm_px[NOSE_RIDGE, 0], 0, S - 1))]
    m = labels == face_label
    # Fill holes: draw the outer contour filled.
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros((S, S), np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)
