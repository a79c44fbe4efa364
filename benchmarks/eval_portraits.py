"""Generate and evaluate heads for real portraits and harder variants of them; print one row each.

    python benchmarks/eval_portraits.py [PHOTO ...]

Without arguments: the portraits shipped in scikit-image (astronaut, camera) and matplotlib
(grace_hopper), plus variants of the first two: mirrored, low resolution, grayscale, rolled 20 deg,
painting-like (OpenCV stylization), strong side light, JPEG quality 10. A failed generation
(a typed error) is a row too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")


def main() -> None:
    from portrait3d.errors import Portrait3DError
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.evaluate import evaluate
    from portrait3d.pipelines.pipeline import Portrait3D
    from portrait3d.testing import evaluation_set

    tmp = Path(tempfile.mkdtemp(prefix="p3d-eval-"))
    photos = [Path(p) for p in sys.argv[1:]] or evaluation_set(tmp)
    p3d = Portrait3D(build_profile_config("fast"))
    hdr = ["photo", "secs", "id0", "id+30", "id-30", "f+60", "f-60", "back", "IoU", "PSNR", "pass"]
    print("".join(f"{h:>10}" if i else f"{h:<22}" for i, h in enumerate(hdr)))
    n_pass = n = 0
    for photo in photos:
        n += 1
        t0 = time.perf_counter()
        try:
            p3d.run(photo).bundle.write(tmp / photo.stem)
        except Portrait3DError as e:
            print(f"{photo.stem[:21]:<22}{time.perf_counter() - t0:>10.1f}  {e.kind}: {e}")
            continue
        secs = time.perf_counter() - t0
        m = evaluate(tmp / photo.stem, photo)
        v = m["views"]
        fmt = lambda d: "none" if d is None else f"{d:.3f}"  # noqa: E731
        row = [
            secs,
            fmt(v["0"]["identity_distance"]),
            fmt(v["30"]["identity_distance"]),
            fmt(v["-30"]["identity_distance"]),
            v["60"]["mediapipe_faces"],
            v["-60"]["mediapipe_faces"],
            v["180"]["mediapipe_faces"] + v["180"]["dlib_hog_faces"],
            f"{m['silhouette_iou']:.3f}",
            f"{m['masked_psnr_db']:.1f}",
            "yes" if m["passed"] else "no",
        ]
        n_pass += m["passed"]
        print(
            f"{photo.stem[:21]:<22}" + "".join(f"{x:>10.1f}" if isinstance(x, float) else f"{x!s:>10}" for x in row),
            flush=True,
        )
    print(f"{n_pass}/{n} heads meet every target")


if __name__ == "__main__":
    main()
