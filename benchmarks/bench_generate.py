"""Per-stage time and peak memory per head for the `fast` profile on this machine.

Each head runs in a fresh process (spawned), so its peak resident memory is its own: model loading
included, nothing carried over from another head.

    python benchmarks/bench_generate.py [PHOTO ...] [--repeat N]

With no photo it uses the two real portraits that ship in scikit-image and matplotlib, and the
card-table photo's crops when setup.sh has fetched it. Targets (issue 15): <= 30 s per head (the
stages; ``total`` adds loading the models, which a warm worker or service pays once) and < 4 GB
peak resident memory on a 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def _one(path: str, out: str, q: mp.Queue) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D

    t0 = time.perf_counter()
    p3d = Portrait3D(build_profile_config("fast"))
    load = time.perf_counter() - t0
    p3d.run(path).bundle.write(out)
    total = time.perf_counter() - t0
    rec = __import__("json").loads(Path(out, "head.json").read_text())
    q.put(
        {
            "load": load,
            **rec["timings_s"],
            "head": total - load,
            "total": total,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    )


def default_photos(tmp: Path) -> list[str]:
    import matplotlib
    import skimage.data
    from PIL import Image

    from portrait3d.testing import INSIGHTFACE_WHEEL, card_table_portraits

    astro = tmp / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(astro)
    photos = [str(astro), str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")]
    if INSIGHTFACE_WHEEL.is_file():
        for name in ("card_table_1", "card_table_4"):
            Image.fromarray(card_table_portraits()[name]).save(tmp / f"{name}.png")
            photos.append(str(tmp / f"{name}.png"))
    return photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="*")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="p3d-bench-"))
    photos = args.photos or default_photos(tmp)
    ctx = mp.get_context("spawn")
    cols = ["load", "analysis", "init", "sculpt", "texture", "export", "head", "total", "peak_rss_gb"]
    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
    print(f"{'photo':<28}" + "".join(f"{c:>12}" for c in cols))
    rows = []
    for photo in photos:
        for _ in range(args.repeat):
            q = ctx.Queue()
            p = ctx.Process(target=_one, args=(photo, str(tmp / f"out{len(rows)}"), q))
            p.start()
            r = q.get()
            p.join()
            rows.append(r)
            print(f"{Path(photo).name[:27]:<28}" + "".join(f"{r[c]:>12.2f}" for c in cols), flush=True)
    worst_t = max(r["head"] for r in rows)
    worst_m = max(r["peak_rss_gb"] for r in rows)
    print(
        f"worst: {worst_t:.1f} s per head (target <= 30), {max(r['total'] for r in rows):.1f} s with loading, "
        f"{worst_m:.2f} GB peak (target < 4): {'PASS' if worst_t <= 30 and worst_m < 4 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
