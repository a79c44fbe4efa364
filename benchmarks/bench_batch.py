"""Batch throughput (in one process, and through Ray with 1 and 2 workers per pool) and the Ray
path's overhead for one head.

    python benchmarks/bench_batch.py [--portraits 8] [--broken 2] [--repeats 4] [--threads N]

Dataset: ``portrait3d.testing.portrait_dataset`` (real portraits that ship in scikit-image and
matplotlib, and variants of them, plus broken files); the ``fast`` profile at its default settings.

Throughput: heads made per minute of wall time. In-process: one ``Portrait3D`` (stages warm, model
load not counted) looping over the files. Ray: from the start of the Ray Data run (worker start-up
included) to the last row, on a local Ray instance with as many logical CPUs as the warm pools need.

One head: the same portrait in one process (``run`` + writing the bundle, stages warm) and through
the pools (from its analysis worker starting to its export worker finishing, read from the manifest
row; every worker started before the head enters, each in a fresh Ray instance), both with the same
torch threads (``--threads``, default all cores); the two paths alternate, repeat by repeat. The Ray
path's own work per head (codec, storage, hand-offs) is the pools' busy time outside the stage calls
plus the gaps between pools. Worker start-up is a once-per-run cost and is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")


def ray_run(inputs: str, out: Path, workers: int, pool_overrides: list[str] | None = None):
    import ray

    from portrait3d.engine.batch import run_batch
    from portrait3d.engine.cluster import connect
    from portrait3d.engine.config import build_engine_config
    from portrait3d.pipelines.config import build_profile_config

    engine = build_engine_config("fast", pool_overrides, workers=workers)
    t0 = time.perf_counter()
    connect(engine)
    t_connect = time.perf_counter() - t0
    try:
        summary = run_batch(inputs, str(out), build_profile_config("fast"), engine)
    finally:
        ray.shutdown()
    return summary, t_connect


def in_process(folder: Path, tmp: Path) -> float:
    from portrait3d.errors import Portrait3DError
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D

    p3d = Portrait3D(build_profile_config("fast"))
    made, t0 = 0, time.perf_counter()
    for photo in sorted(folder.iterdir()):
        try:
            p3d.run(photo).bundle.write(tmp / "inproc-loop" / photo.stem)
            made += 1
        except Portrait3DError:
            pass
    wall = time.perf_counter() - t0
    rate = made / (wall / 60)
    print(f"{'in-process':>12} {made:>6} {'':>7} {wall:>8.1f} {rate:>10.2f}", flush=True)
    return rate


def scaling(folder: Path, tmp: Path) -> None:
    print(f"{'workers/pool':>12} {'heads':>6} {'failed':>7} {'wall s':>8} {'heads/min':>10} {'ray.init s':>11}")
    base = in_process(folder, tmp)
    rates = {}
    for workers in (1, 2):
        s, t_connect = ray_run(str(folder), tmp / f"scaling-{workers}", workers)
        p = s.progress
        rates[workers] = p.made / (s.elapsed_s / 60)
        print(
            f"{workers:>12} {p.made:>6} {p.failed:>7} {s.elapsed_s:>8.1f} {rates[workers]:>10.2f} {t_connect:>11.1f}",
            flush=True,
        )
    print(
        f"scaling ratio (2 workers / 1 worker): {rates[2] / rates[1]:.2f} on {os.cpu_count()} cores; "
        f"Ray with 1 worker per pool vs in-process loop: {rates[1] / base:.2f}x"
    )


def overhead(folder: Path, tmp: Path, repeats: int, threads: int) -> None:
    import torch

    from portrait3d.engine.rows import TIMING_COLUMNS
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D

    photo = folder / "astronaut.png"
    torch.set_num_threads(threads)
    p3d = Portrait3D(build_profile_config("fast"))
    pools = ("analysis", "geometry", "texture", "export")
    settings = [f"{p}.torch_threads={threads}" for p in pools] + ["batch.wait_for_workers_s=600"]
    runs: dict[str, list[dict[str, float]]] = {"in-process": [], "Ray": []}
    startup = []
    # The two paths alternate, so that a slow spell of the machine falls on both.
    for i in range(repeats):
        t0 = time.perf_counter()
        result = p3d.run(photo)
        files = result.bundle.write(tmp / f"inproc-{i}")
        wall = time.perf_counter() - t0
        export_s = json.loads(Path(files["head.json"]).read_text())["timings_s"]["export"]
        runs["in-process"].append({"head": wall, **result.timings, "export": export_s})
        s, _ = ray_run(str(photo), tmp / f"ray-{i}", 1, settings)
        (row,) = s.rows
        w = json.loads(row["workers_json"])
        wall = w["export"]["finished"] - w["analysis"]["started"]
        runs["Ray"].append({"head": wall, **{st: row[c] for st, c in TIMING_COLUMNS.items()}})
        startup.append(s.elapsed_s - wall)
    for r in (*runs["in-process"], *runs["Ray"]):
        r["outside"] = r["head"] - sum(r[st] for st in TIMING_COLUMNS)
    mean = {k: {c: statistics.mean(r[c] for r in v) for c in v[0]} for k, v in runs.items()}
    for k, v in runs.items():
        heads = [r["head"] for r in v]
        print(
            f"one head {k:>10}: mean {mean[k]['head']:.2f} s, median {statistics.median(heads):.2f} s "
            f"({', '.join(f'{x:.2f}' for x in heads)})"
        )
    a, b = mean["in-process"]["head"], mean["Ray"]["head"]
    med = [statistics.median(r["head"] for r in runs[k]) for k in runs]
    print(
        f"Ray path overhead for one head, {threads} torch thread(s): {100 * (b - a) / a:+.1f}% on the mean, "
        f"{100 * (med[1] - med[0]) / med[0]:+.1f}% on the median (target < 10%)"
    )
    for c in (*TIMING_COLUMNS, "outside"):
        x, y = mean["in-process"][c], mean["Ray"][c]
        print(f"  {c:>9}: in-process {x:5.2f} s, Ray {y:5.2f} s ({y - x:+.2f} s)")
    print("  (outside: time outside the stage calls; on the Ray path codec, storage, hand-offs between pools)")
    print(f"once per run: worker start-up and Ray Data planning {statistics.mean(startup):.1f} s")


def main() -> None:
    from portrait3d.testing import portrait_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--portraits", type=int, default=8)
    ap.add_argument("--broken", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads of the one-head runs, on both paths (default: all cores)",
    )
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="p3d-bench-batch-"))
    folder = tmp / "portraits"
    portrait_dataset(folder, args.portraits, args.broken)
    print(f"dataset: {args.portraits} portraits + {args.broken} broken files; machine: {os.cpu_count()} cores")
    if not args.skip_scaling:
        scaling(folder, tmp)
    if not args.skip_overhead:
        overhead(folder, tmp, args.repeats, args.threads)


if __name__ == "__main__":
    main()
