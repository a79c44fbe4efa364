"""How fast a cancel stops a head: seconds from setting the cancellation token (from another thread,
as the HTTP service's DELETE or a batch time limit would) to ``CancelledError``, per stage, for the
``fast`` profile on this machine.

    python benchmarks/bench_cancel.py [PHOTO] [--samples N] [--seed S]

A first run measures each stage's duration; then, for each stage, ``N`` runs each cancel at a
uniformly random moment inside that stage. The stage that was running when the token was set is
the one a sample counts for. Target (issue 11): within about a second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path


def cancel_once(p3d: object, photo: Path, target: str, delay: float) -> tuple[str, float] | None:
    """One run whose token is set ``delay`` seconds into stage ``target``: (the stage that was running
    when it was set, seconds until CancelledError), or None when the head finished first."""
    from portrait3d.errors import CancelledError
    from portrait3d.pipelines.pipeline import RunContext
    from portrait3d.pipelines.stage import CancelToken

    token, state = CancelToken(), {"stage": None, "at": None, "in": None}

    def cancel() -> None:
        state["at"], state["in"] = time.monotonic(), state["stage"]
        token.cancel("benchmark")

    def progress(stage: str, frac: float, msg: str) -> None:
        if frac == 0.0 and state["stage"] != stage:
            state["stage"] = stage
            if stage == target:
                threading.Timer(delay, cancel).start()

    try:
        p3d.run(photo, RunContext(progress=progress, cancel=token))
    except CancelledError:
        return state["in"], time.monotonic() - state["at"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photo", nargs="?", type=Path)
    ap.add_argument("--samples", type=int, default=5, help="cancels per stage")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from portrait3d.native_stderr import hidden_native_stderr
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D
    from portrait3d.pipelines.registry import STAGES
    from portrait3d.testing import shipped_portraits

    photo = args.photo
    if photo is None:
        from PIL import Image

        photo = Path(tempfile.mkdtemp()) / "astronaut.png"
        Image.fromarray(shipped_portraits()["astronaut"]).save(photo)
    rng = random.Random(args.seed)
    with hidden_native_stderr(), Portrait3D(build_profile_config("fast")) as p3d:
        durations = p3d.run(photo).timings
        print("stage durations (s):", ", ".join(f"{s} {t:.2f}" for s, t in durations.items()))
        latencies: dict[str, list[float]] = {s: [] for s in STAGES}
        for target in STAGES:
            for _ in range(args.samples):
                sample = cancel_once(p3d, photo, target, rng.uniform(0, durations[target]))
                if sample is not None:
                    latencies[sample[0]].append(sample[1])
        print(f"{'stage':<10}{'samples':>8}{'p50 (s)':>10}{'max (s)':>10}")
        for stage, xs in latencies.items():
            if xs:
                print(f"{stage:<10}{len(xs):>8}{statistics.median(xs):>10.3f}{max(xs):>10.3f}")
        every = [x for xs in latencies.values() for x in xs]
        print(f"all: {len(every)} cancels, p50 {statistics.median(every):.3f} s, max {max(every):.3f} s")


if __name__ == "__main__":
    main()
