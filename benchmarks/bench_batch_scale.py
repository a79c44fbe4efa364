"""What ``portrait3d batch`` costs per row as the input count grows, on cheap inputs.

    python benchmarks/bench_batch_scale.py [--counts 1000,10000,100000] [--cluster]

For each count N: a folder of N broken files (text, truncated JPEGs, empty files: every one an error
row, found by the precheck) plus one real portrait, run through the real plan (``run_batch``) on a
fresh local Ray instance in a subprocess of its own. Prints: listing time, time to the first row,
run time, engine overhead per row (run time less the one head, over N), the driver's peak memory
(RSS, sampled every 50 ms), and a rerun on the same output (the head reused, the errors found again),
and how each grows with N. With ``--cluster``: the same on a simulated 3-node cluster
(``ray.cluster_utils.Cluster``, one CPU per node) with the output on the S3 test server (moto).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["init.subdivisions=4", "sculpt.steps=10", "sculpt.resolution=128", "texture.texture_size=256"]


def make_inputs(folder: Path, n: int) -> None:
    from portrait3d.testing import distinct_portraits

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "portrait.jpg").write_bytes(distinct_portraits(1)[0])
    truncated = distinct_portraits(1)[0][:2000]
    for i in range(n):
        kind = i % 3
        name, data = [
            (f"note{i:06d}.png", b"minutes of the meeting %d\n" % i),
            (f"cut{i:06d}.jpg", truncated + i.to_bytes(4, "little")),
            (f"empty{i:06d}.jpg", b""),
        ][kind]
        (folder / name).write_bytes(data)


def s3_output() -> str:
    """An S3 test server (moto) on loopback for this process and the Ray processes it starts; a bucket
    on it."""
    import os
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench/out"


def one(n: int, folder: Path, cluster: bool) -> dict:
    """Runs inside its own process: the run and the rerun of N broken files and one portrait."""
    import psutil

    from portrait3d.engine.batch import list_input_table, run_batch
    from portrait3d.engine.cluster import connect
    from portrait3d.engine.config import build_engine_config
    from portrait3d.pipelines.config import build_profile_config

    me = psutil.Process()
    peak = [me.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            stop.wait(0.05)

    threading.Thread(target=sample, daemon=True).start()
    engine = build_engine_config("fast")
    output = str(folder / "out")
    if cluster:
        from ray.cluster_utils import Cluster

        output = s3_output()
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        nodes.add_node(num_cpus=1)
        nodes.add_node(num_cpus=1)
        connect(engine, address=nodes.address)
    else:
        connect(engine)
    config = build_profile_config("fast", QUICK)
    t = time.perf_counter()
    listing, _ = list_input_table(str(folder / "in"))
    listing_s = time.perf_counter() - t
    first = []

    def on_row(row: dict, progress: object) -> None:
        if not first:
            first.append(time.perf_counter())

    t0 = time.perf_counter()
    s = run_batch(listing, output, config, engine, on_row=on_row)
    run_s = time.perf_counter() - t0
    head_s = sum(
        r[f"t_{k}_s"] for r in s.rows if r["status"] == "ok" for k in ("analysis", "init", "sculpt", "texture")
    )
    t1 = time.perf_counter()
    listing, _ = list_input_table(str(folder / "in"))  # a rerun lists again: files may have changed
    relisting_s = time.perf_counter() - t1
    s2 = run_batch(listing, output, config, engine)
    rerun_s = time.perf_counter() - t1 - relisting_s
    stop.set()
    return {
        "n": n,
        "listing_s": listing_s,
        "first_row_s": first[0] - t0,
        "run_s": run_s,
        "overhead_ms_per_row": 1000 * max(0.0, run_s - head_s) / (n + 1),
        "peak_rss_mb": peak[0] / 2**20,
        "rerun_s": rerun_s,
        "rerun_reused": s2.progress.reused,
        "errors": s.progress.failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1000,10000,100000")
    ap.add_argument("--cluster", action="store_true", help="a simulated 3-node cluster, output on S3 (moto)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one, Path(args.folder), args.cluster)), flush=True)
        return
    results = []
    for n in map(int, args.counts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            make_inputs(Path(tmp) / "in", n)
            cmd = [sys.executable, __file__, "--one", str(n), "--folder", tmp, *(["--cluster"] if args.cluster else [])]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-4000:])
                raise SystemExit(f"the run of {n} inputs failed")
            r = json.loads(line[7:])
            results.append(r)
            print(
                f"{n:>7} inputs: listing {r['listing_s']:.1f} s, first row {r['first_row_s']:.1f} s, "
                f"run {r['run_s']:.1f} s, overhead {r['overhead_ms_per_row']:.1f} ms/row, "
                f"driver peak {r['peak_rss_mb']:.0f} MB, rerun {r['rerun_s']:.1f} s "
                f"({r['rerun_reused']} reused, {r['errors']} error rows)",
                flush=True,
            )
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["overhead_ms_per_row"] / a["overhead_ms_per_row"]
        print(
            f"from {a['n']} to {b['n']} inputs: overhead/row x{growth:.2f}, "
            f"driver peak memory x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
