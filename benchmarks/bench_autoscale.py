"""The service's autoscaling on a simulated cluster that mirrors deploy/k8s/overlays/gpu-prod.

    python benchmarks/bench_autoscale.py [--jobs 6] [--max-replicas 2] [--idle-timeout 10]

Renders the gpu-prod overlay (the pinned kubectl's kustomize), starts a simulated autoscaling Ray
cluster whose node types are its RayService's worker groups (head with 0 CPUs, the CPU group, the
H100 and L4 GPU groups with fake GPUs), deploys its Serve app on the fast profile, submits ``--jobs``
distinct real portraits at once, and prints the timeline once per second: jobs queued/running/done,
running replicas per deployment and alive nodes per group, until every job ended and the GPU groups
are back to zero nodes. Then the seconds to the first GPU node, to the last job, and to zero GPU
nodes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUICK = ["init.subdivisions=4", "sculpt.steps=10", "sculpt.resolution=128", "texture.texture_size=256"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--max-replicas", type=int, default=2, help="cap on each pool's replicas and each group's nodes")
    ap.add_argument("--idle-timeout", type=float, default=10, help="seconds before an idle node is removed")
    ap.add_argument("--full", action="store_true", help="the fast profile's own settings, not the quick ones")
    args = ap.parse_args()

    from portrait3d.serve_app.simulate import run_burst
    from portrait3d.testing import distinct_portraits
    from tests.conftest import free_port
    from tests.k8s import by_kind, render

    service = by_kind(render("overlays/gpu-prod"), "RayService")[0]
    with tempfile.TemporaryDirectory() as tmp:
        timeline = run_burst(
            service,
            distinct_portraits(args.jobs),
            data=str(Path(tmp) / "data"),
            port=free_port(),
            settings=[] if args.full else QUICK,
            max_replicas=args.max_replicas,
            idle_timeout_s=args.idle_timeout,
            log=lambda m: print(m, flush=True),
        )
    groups = ("cpu", "gpu-geometry", "gpu-texture")
    print(timeline.table(("analysis", "geometry", "texture", "export"), groups))
    rows = timeline.rows
    t0 = rows[0]["t"]

    def gpu(r: dict) -> int:
        return r["nodes"]["gpu-geometry"] + r["nodes"]["gpu-texture"]

    def ended(r: dict) -> bool:
        return r["jobs"]["done"] + r["jobs"]["failed"] >= args.jobs

    def first(rows: list[dict], cond: object) -> str:
        return next((f"{r['t'] - t0:.0f} s" for r in rows if cond(r)), "never")

    print(f"jobs: {args.jobs}; statuses: {sorted(s['status'] for s in timeline.statuses.values())}")
    print(f"first GPU node: {first(rows, lambda r: gpu(r) > 0)}; peak GPU nodes: {max(map(gpu, rows))}")
    print(f"last job ended: {first(rows, ended)}")
    print(f"zero GPU nodes again: {first([r for r in rows if ended(r)], lambda r: gpu(r) == 0)}")


if __name__ == "__main__":
    main()
