"""Score a head bundle against its portrait (``portrait3d eval``).

- identity: dlib descriptor distance between the photo and renders at yaw 0 and +-30 (same person
  below 0.6; also reported at +-60); a render where no face is detected counts as a failure;
- profile views: mediapipe's full-range detector must find a face at yaw +-60, in at least two of the
  views at 55, 60 and 65 degrees on each side (one view alone can miss a face its neighbours find);
- back view: no detector (mediapipe full range, dlib HOG) may find a face at yaw 180;
- reference view: silhouette IoU against the head mask, PSNR inside the head mask;
- mesh: watertight, no degenerate faces; texture: used texels filled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from ..errors import BundleError
from .analysis import MediapipeAnalysis, dlib_hog
from .camera import Camera
from .image_io import load_image
from .mesh import quality
from .settings import make_config
from .stage import Reporter
from .types import AnalysisInput, HeadMesh, TexturedHead
from .views import render_textured

TARGETS = {"identity_max": 0.6, "iou_min": 0.95, "coverage_min": 0.99}
SIDE_SPREAD_DEG = (-5, 0, 5)  # the views each side check looks at, around +-60 degrees


def load_bundle(bundle: str | Path) -> tuple[dict[str, Any], TexturedHead]:
    bundle = Path(bundle)
    for name in ("head.glb", "head.json"):
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle} is not a head bundle: {name} is missing")
    try:
        record = json.loads((bundle / "head.json").read_text())
        mesh = trimesh.load(bundle / "head.glb", force="mesh", process=False)
        tex = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
        uv = np.asarray(mesh.visual.uv, np.float32)
    except (OSError, ValueError, AttributeError, KeyError) as e:
        raise BundleError(f"cannot read the bundle in {bundle}: {e}") from None
    v = np.asarray(mesh.vertices, np.float32)
    f = np.asarray(mesh.faces, np.int64)
    hm = HeadMesh(vertices=v, faces=f, mirror=np.arange(len(v)), face_weight=np.zeros(len(v), np.float32))
    head = TexturedHead(
        mesh=hm,
        uv=uv,
        uv_faces=f,
        uv_to_vertex=np.arange(len(v)),
        texture=tex,
        stats=record.get("metrics", {}).get("texture", {}),
    )
    return record, head


def evaluate(bundle: str | Path, image: str | Path, view_size: int = 512) -> dict[str, Any]:
    record, head = load_bundle(bundle)
    img = load_image(image)
    settings = {**record["config"]["stages"]["analysis"], "identity": "dlib", "caption": "", "models": ""}
    cfg = make_config(MediapipeAnalysis.Config, settings, "analysis")
    stage = MediapipeAnalysis(cfg)
    try:
        a = stage(AnalysisInput(img), Reporter("analysis"))
        dlib_enc = stage.identity  # cfg.identity is "dlib" above
        ref = Camera.from_dict(record["reference_camera"])
        dist = float(np.linalg.norm(ref.center))
        out: dict[str, Any] = {
            "bundle": str(bundle),
            "image": str(image),
            "same_input": record.get("input_sha256") == img.sha256,
        }

        render, mask = render_textured(head, ref, background=(0, 0, 0))
        hm = a.head_mask
        out["silhouette_iou"] = float((mask & hm).sum() / max((mask | hm).sum(), 1))
        both = mask & hm
        mse = float(((render[both].astype(np.float64) - a.crop[both]) ** 2).mean()) if both.any() else float("nan")
        out["masked_psnr_db"] = float(10 * np.log10(255.0**2 / max(mse, 1e-10)))

        def look(yaw: float) -> tuple[np.ndarray, list]:
            cam = Camera.orbit(yaw, 0, dist, ref.fovy_deg, view_size)
            im, _ = render_textured(head, cam, background=(128, 128, 128))
            return im, stage.detect_faces(im)

        views = {}
        for yaw in (0, 30, -30, 60, -60, 180):
            im, faces = look(yaw)
            entry: dict[str, Any] = {"mediapipe_faces": len(faces)}
            if abs(yaw) == 60:
                entry["mediapipe_faces_around"] = [len(look(yaw + d)[1]) if d else len(faces) for d in SIDE_SPREAD_DEG]
            if yaw != 180:  # checked at 0 and +-30; reported at +-60 too
                d = None
                if faces:
                    e = dlib_enc.embed(im, faces[0][1])
                    d = None if e is None else dlib_enc.distance(e, a.identity)
                entry["identity_distance"] = d
            if yaw == 180:
                entry["dlib_hog_faces"] = len(dlib_hog()(im, 1))
            views[str(yaw)] = entry
        out["views"] = views

        merged = trimesh.Trimesh(head.mesh.vertices, head.mesh.faces, process=False)
        merged.merge_vertices(merge_tex=True, merge_norm=True)
        out["mesh"] = quality(np.asarray(merged.vertices), np.asarray(merged.faces))
        out["texture_coverage"] = float(head.stats.get("coverage", float("nan")))
        out["checks"] = _checks(out)
        out["passed"] = all(c["pass"] for c in out["checks"].values())
        return out
    finally:
        stage.close()


def _checks(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    v = m["views"]
    c = {}
    for yaw in ("0", "30", "-30"):
        d = v[yaw]["identity_distance"]
        c[f"identity_yaw_{yaw}"] = {
            "value": d,
            "target": f"< {TARGETS['identity_max']}",
            "pass": d is not None and d < TARGETS["identity_max"],
        }
    for yaw in ("60", "-60"):
        seen = sum(n >= 1 for n in v[yaw]["mediapipe_faces_around"])
        c[f"face_found_yaw_{yaw}"] = {
            "value": seen,
            "target": f">= 2 of the views at {yaw} +-5 deg",
            "pass": seen >= 2,
        }
    back = v["180"]["mediapipe_faces"] + v["180"]["dlib_hog_faces"]
    c["no_face_yaw_180"] = {"value": back, "target": "0", "pass": back == 0}
    c["silhouette_iou"] = {
        "value": m["silhouette_iou"],
        "target": f">= {TARGETS['iou_min']}",
        "pass": m["silhouette_iou"] >= TARGETS["iou_min"],
    }
    c["texture_coverage"] = {
        "value": m["texture_coverage"],
        "target": f">= {TARGETS['coverage_min']}",
        "pass": m["texture_coverage"] >= TARGETS["coverage_min"],
    }
    c["watertight"] = {"value": m["mesh"]["watertight"], "target": "true", "pass": bool(m["mesh"]["watertight"])}
    c["no_degenerate_faces"] = {
        "value": m["mesh"]["degenerate_faces"],
        "target": "0",
        "pass": m["mesh"]["degenerate_faces"] == 0,
    }
    return c
