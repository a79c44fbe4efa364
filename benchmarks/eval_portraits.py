"""Generate and evaluate heads for real portraits and harder variants of them; print one row each.

    python benchmarks/eval_portraits.py [PHOTO ...]

Without arguments: the portraits shipped in scikit-image (astronaut, camera) and matplotlib
(grace_hopper), plus variants of the first two: mirrored, low resolution, grayscale, rolled 20 deg,
painting-like (OpenCV stylization), strong side light, JPEG quality 10. A failed generation
(a typed error) is a row too.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

os.environ.setdefault("GLOG_minloglevel", "2")


def variants(tmp: Path) -> list[Path]:
    import matplotlib
    import skimage.data
    astro = skimage.data.astronaut()
    grace = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    out: dict[str, np.ndarray | bytes] = {"astronaut": astro, "grace_hopper": grace,
                                          "cameraman": np.repeat(skimage.data.camera()[..., None], 3, 2)}
    for name, img in (("astronaut", astro), ("grace", grace)):
        h, w = img.shape[:2]
        out[f"{name}_mirrored"] = np.ascontiguousarray(img[:, ::-1])
        out[f"{name}_lowres"] = cv2.resize(img, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA)
        out[f"{name}_gray"] = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, 2)
        M = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
        out[f"{name}_roll20"] = cv2.warpAffine(img, M, (w, h), borderMode=cv2.BORDER_REFLECT)
        out[f"{name}_painting"] = cv2.stylization(img, sigma_s=60, sigma_r=0.45)
        ramp = np.linspace(1.15, 0.35, w)[None, :, None]
        out[f"{name}_sidelight"] = np.clip(img * ramp, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=10)
        out[f"{name}_jpeg10"] = buf.getvalue()
    paths = []
    for name, data in out.items():
        p = tmp / f"{name}.{'jpg' if isinstance(data, bytes) else 'png'}"
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            Image.fromarray(data).save(p)
        paths.append(p)
    return paths


def main() -> None:
    from portrait3d.errors import Portrait3DError
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.evaluate import evaluate
    from portrait3d.pipelines.pipeline import Portrait3D

    tmp = Path(tempfile.mkdtemp(prefix="p3d-eval-"))
    photos = [Path(p) for p in sys.argv[1:]] or variants(tmp)
    p3d = Portrait3D(build_profile_config("fast"))
    hdr = ["photo", "secs", "id0", "id+30", "id-30", "f+60", "f-60", "back", "IoU", "PSNR", "pass"]
    print("".join(f"{h:>10}" if i else f"{h:<22}" for i, h in enumerate(hdr)))
    n_pass = n = 0
    for photo in photos:
        n += 1
        t0 = time.perf_counter()
        try:
            p3d.write(p3d.run(photo), tmp / photo.stem)
        except Portrait3DError as e:
            print(f"{photo.stem[:21]:<22}{time.perf_counter() - t0:>10.1f}  {e.kind}: {e}")
            continue
        secs = time.perf_counter() - t0
        m = evaluate(tmp / photo.stem, photo)
        v = m["views"]
        fmt = lambda d: "none" if d is None else f"{d:.3f}"  # noqa: E731
        row = [secs, fmt(v["0"]["identity_distance"]), fmt(v["30"]["identity_distance"]),
               fmt(v["-30"]["identity_distance"]), v["60"]["mediapipe_faces"], v["-60"]["mediapipe_faces"],
               v["180"]["mediapipe_faces"] + v["180"]["dlib_hog_faces"], f"{m['silhouette_iou']:.3f}",
               f"{m['masked_psnr_db']:.1f}", "yes" if m["passed"] else "no"]
        n_pass += m["passed"]
        print(f"{photo.stem[:21]:<22}" + "".join(f"{x:>10.1f}" if isinstance(x, float) else f"{x!s:>10}" for x in row),
              flush=True)
    print(f"{n_pass}/{n} heads meet every target")


if __name__ == "__main__":
    main()
