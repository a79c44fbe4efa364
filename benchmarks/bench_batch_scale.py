"""What ``portrait3d batch`` costs per row as the input count grows, on cheap inputs.

    python benchmarks/bench_batch_scale.py [--counts 1000,10000,100000]

For each count N: a folder of N broken files (text, truncated JPEGs, empty files: every one an error
row, found by the precheck) plus one real portrait, run through the real plan (``run_batch``) on a
fresh local Ray instance in a subprocess of its own. Prints: listing time, time to the first row,
run time, engine overhead per row (run time less the one head, over N), the driver's peak memory
(RSS, sampled every 50 ms), and a rerun on the same output (the head reused, the errors found again),
and how each grows with N.
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


def one(n: int, folder: Path) -> dict:
    """Runs inside its own process: the run and the rerun of N broken files and one portrait."""
    import psutil

    from portrait3d.engine.batch import list_inputs, run_batch
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
    connect(engine)
    config = build_profile_config("fast", QUICK)
    t = time.perf_counter()
    uris, _ = list_inputs(str(folder / "in"))
    listing = time.perf_counter() - t
    first = []

    def on_row(row: dict, progress: object) -> None:
        if not first:
            first.append(time.perf_counter())

    t0 = time.perf_counter()
    s = run_batch(uris, str(folder / "out"), config, engine, on_row=on_row)
    run_s = time.perf_counter() - t0
    head_s = sum(
        r[f"t_{k}_s"] for r in s.rows if r["status"] == "ok" for k in ("analysis", "init", "sculpt", "texture")
    )
    t1 = time.perf_counter()
    s2 = run_batch(uris, str(folder / "out"), config, engine)
    rerun_s = time.perf_counter() - t1
    stop.set()
    return {
        "n": n,
        "listing_s": listing,
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
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.one, Path(args.folder))), flush=True)
        return
    results = []
    for n in map(int, args.counts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            make_inputs(Path(tmp) / "in", n)
            cmd = [sys.executable, __file__, "--one", str(n), "--folder", tmp]
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
