"""The HTTP service under load on loopback, against ``portrait3d batch`` on the same inputs.

    python benchmarks/bench_serve.py [--jobs 50] [--clients 10] [--pollers 4] [--streams 4] [--skip-batch]

Starts the service (``fast`` profile, embedded SQLite store, a local Ray instance), then ``--clients``
threads submit ``--jobs`` distinct portraits (the shipped ones and their variants, each with a
different seed so that every job is a head of its own) while ``--pollers`` threads read the status of
random jobs (each every ``--poll-interval`` s) and ``--streams`` threads follow jobs' server-sent events. Prints
every request that failed, the p50/p99 latency of submit and of status (while heads are being made),
and heads per minute from the first submit to the last head; then the same portraits through
``portrait3d batch`` (a fresh local Ray instance) for heads per minute. Targets (issue 12): no
request errors, p99 status under 100 ms, heads/min within 15% of batch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path


def portraits(n: int, folder: Path) -> list[Path]:
    """``n`` distinct real portraits (``testing.distinct_portraits``) as files."""
    from portrait3d.testing import distinct_portraits

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(distinct_portraits(n)):
        p = folder / f"p{i:03d}.jpg"
        p.write_bytes(data)
        out.append(p)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def wait_all(url: str, ids: set[str], every_s: float = 2.0) -> dict[str, dict]:
    """The final status of each job in ``ids``, read from the job list (one request per page of 100
    every ``every_s``: the load on the service is the pollers' and the streams', not this loop's)."""
    import requests

    final: dict[str, dict] = {}
    while len(final) < len(ids):
        offset: int | None = 0
        while offset is not None:
            page = requests.get(f"{url}/v1/heads", params={"limit": 100, "offset": offset}, timeout=30).json()
            final.update(
                {j["id"]: j for j in page["items"] if j["id"] in ids and j["status"] in ("done", "failed", "cancelled")}
            )
            offset = page["next_offset"]
        time.sleep(every_s)
    return final


def run_service(photos: list[Path], args: argparse.Namespace, tmp: Path) -> dict:
    import ray
    import requests
    from ray import serve

    from portrait3d.serve_app.app import start_local

    url = start_local(
        {"profile": "fast", "data": str(tmp / "serve"), "max_active_per_client": 1000}, "127.0.0.1", args.port
    )
    from portrait3d.testing import wait_ready

    wait_ready(url, timeout=300)
    lock = threading.Lock()
    ids: list[str] = []
    errors: list[str] = []
    submit_s: list[float] = []
    status_s: list[float] = []
    events = {"streams": 0, "events": 0}
    todo = list(enumerate(photos))
    finished = threading.Event()

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not todo:
                    return
                i, photo = todo.pop(0)
            t0 = time.perf_counter()
            try:
                r = session.post(
                    f"{url}/v1/heads",
                    files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                    data={"seed": str(i)},
                    timeout=300,
                )
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 202:
                        ids.append(r.json()["id"])
                        submit_s.append(dt)
                    else:
                        errors.append(f"submit {photo.name}: {r.status_code} {r.text[:200]}")
            except requests.RequestException as e:
                with lock:
                    errors.append(f"submit {photo.name}: {e}")

    def poller() -> None:
        session = requests.Session()
        while not finished.is_set():
            with lock:
                job = random.choice(ids) if ids else None
            if job is None:
                time.sleep(0.05)
                continue
            t0 = time.perf_counter()
            try:
                r = session.get(f"{url}/v1/heads/{job}", timeout=30)
                dt = time.perf_counter() - t0
                with lock:
                    (status_s.append(dt) if r.status_code == 200 else errors.append(f"status: {r.status_code}"))
            except requests.RequestException as e:
                with lock:
                    errors.append(f"status: {e}")
            time.sleep(args.poll_interval)

    def streamer() -> None:
        while not finished.is_set():
            with lock:
                job = random.choice(ids) if ids else None
            if job is None:
                time.sleep(0.1)
                continue
            try:
                with requests.get(f"{url}/v1/heads/{job}/events", stream=True, timeout=600) as r:
                    with lock:
                        events["streams"] += 1
                    for line in r.iter_lines():
                        if line.startswith(b"data: "):
                            with lock:
                                events["events"] += 1
                        if finished.is_set():
                            break
            except requests.RequestException as e:
                with lock:
                    errors.append(f"events: {e}")

    t_start = time.perf_counter()
    threads = [
        threading.Thread(target=f, daemon=True)
        for f in [client] * args.clients + [poller] * args.pollers + [streamer] * args.streams
    ]
    for t in threads:
        t.start()
    for t in threads[: args.clients]:
        t.join()
    final = wait_all(url, set(ids))
    t_end = max(s["finished_at"] for s in final.values())
    first = min(s["created_at"] for s in final.values())
    finished.set()
    for t in threads[args.clients :]:
        t.join(timeout=30)
    serve.shutdown()
    ray.shutdown()
    done = sum(s["status"] == "done" for s in final.values())
    failed = {j: s["error"] for j, s in final.items() if s["status"] != "done"}
    return {
        "errors": errors,
        "submit_s": submit_s,
        "status_s": status_s,
        "events": events,
        "done": done,
        "failed": failed,
        "wall_s": time.perf_counter() - t_start,
        "heads_per_min": done / ((t_end - first) / 60),
    }


def run_batch(photos: list[Path], tmp: Path) -> dict:
    import ray

    from portrait3d.engine.batch import run_batch as batch
    from portrait3d.engine.cluster import connect
    from portrait3d.engine.config import build_engine_config
    from portrait3d.pipelines.config import build_profile_config

    engine = build_engine_config("fast")
    connect(engine)
    t0 = time.perf_counter()
    s = batch([str(p) for p in photos], str(tmp / "batch"), build_profile_config("fast"), engine)
    rows = s.rows
    ray.shutdown()
    starts = [json.loads(r["workers_json"])["analysis"]["started"] for r in rows]
    ends = [json.loads(r["workers_json"])["export"]["finished"] for r in rows if r["status"] == "ok"]
    return {
        "ok": s.progress.ok,
        "failed": s.progress.failed,
        "wall_s": time.perf_counter() - t0,
        "heads_per_min": s.progress.ok / ((max(ends) - min(starts)) / 60),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--pollers", type=int, default=4)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--poll-interval", type=float, default=1.0, help="seconds between one poller's requests")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--skip-batch", action="store_true")
    args = ap.parse_args()
    from portrait3d.native_stderr import hidden_native_stderr

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    photos = portraits(args.jobs, tmp / "in")
    with hidden_native_stderr():
        s = run_service(photos, args, tmp)
        b = None if args.skip_batch else run_batch(photos, tmp)
    print(
        f"service: {s['done']}/{args.jobs} heads done, {len(s['failed'])} not ({s['failed']}), "
        f"{len(s['errors'])} request errors"
    )
    for e in s["errors"][:20]:
        print("  ", e)
    print(
        f"  submit  n={len(s['submit_s'])}  p50 {pct(s['submit_s'], 50) * 1000:.0f} ms  "
        f"p99 {pct(s['submit_s'], 99) * 1000:.0f} ms  (decode, checks and stage 1 on the upload)"
    )
    print(
        f"  status  n={len(s['status_s'])}  p50 {pct(s['status_s'], 50) * 1000:.1f} ms  "
        f"p99 {pct(s['status_s'], 99) * 1000:.1f} ms  mean {statistics.mean(s['status_s']) * 1000:.1f} ms"
    )
    print(f"  events  {s['events']['streams']} streams, {s['events']['events']} events")
    print(f"  {s['heads_per_min']:.2f} heads/min (first submit to last head), wall {s['wall_s']:.0f} s")
    if b:
        print(
            f"batch:   {b['ok']} ok, {b['failed']} failed, {b['heads_per_min']:.2f} heads/min, wall {b['wall_s']:.0f} s"
        )
        print(f"service / batch heads/min: {s['heads_per_min'] / b['heads_per_min']:.3f}")


if __name__ == "__main__":
    main()
