"""Every stage through one interface: progress from every stage, cancellation in the middle of a
stage within 2 s with nothing written, typed inputs, close()."""

import threading
import time

import pytest

from portrait3d.errors import CancelledError
from portrait3d.pipelines.config import build_profile_config
from portrait3d.pipelines.pipeline import Portrait3D, RunContext
from portrait3d.pipelines.registry import STAGES
from portrait3d.pipelines.stage import CancelToken, Reporter

from .conftest import QUICK_HEAD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fast():
    with Portrait3D(build_profile_config("fast")) as p3d:
        yield p3d


def test_reporter_throttles_spans_and_cancels():
    seen = []
    token = CancelToken()
    report = Reporter("texture", lambda s, f, m: seen.append(round(f, 3)), token, interval_s=3600)
    report(0.0)
    report(0.5)  # within the interval: not passed on
    part = report.span(0.5, 0.9)
    part(1.0, "done with the part")  # a finished span is always passed on
    assert seen == [0.0, 0.9]
    token.cancel("user")
    with pytest.raises(CancelledError, match="user"):
        part.check()
    assert token.wait(0) and token.cancelled


def test_every_stage_reports_progress_in_order(astronaut_png, tmp_path):
    events = []
    ctx = RunContext(progress=lambda s, f, m: events.append((s, f, m)))
    with Portrait3D(build_profile_config("fast", QUICK_HEAD)) as quick:  # the order, not the head, is tested
        result, paths = quick.generate(astronaut_png, tmp_path / "out", ctx)
    order = [s for s, _, _ in events]
    assert [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s] == list(STAGES)
    for stage in STAGES:
        fracs = [f for s, f, _ in events if s == stage]
        assert fracs[0] == 0.0 and fracs[-1] == 1.0 and fracs == sorted(fracs), (stage, fracs)
    # the long loops say where they are
    assert any(m.startswith("step ") for s, _, m in events if s == "sculpt")
    assert any(m.startswith("view ") for s, _, m in events if s == "texture")
    assert set(result.timings) == set(STAGES) and sorted(p.rsplit("/", 1)[1] for p in paths.values()) == [
        "head.glb",
        "head.json",
        "views.png",
    ]


@pytest.mark.parametrize("stage, after_s", [("sculpt", 1.0), ("texture", 0.5), ("texture", 4.5)])
def test_a_cancel_in_the_middle_of_a_stage_stops_it_within_2_s(fast, astronaut_png, tmp_path, stage, after_s):
    """Another thread cancels ``after_s`` into the stage (texture at 0.5 s: inside xatlas; at 4.5 s:
    in the inpainting views)."""
    token = CancelToken()
    cancelled_at = []

    def cancel_later():
        cancelled_at.append(time.monotonic())
        token.cancel("the user cancelled")

    def progress(s, frac, msg):
        if s == stage and frac == 0.0 and not cancelled_at:
            threading.Timer(after_s, cancel_later).start()

    out = tmp_path / "out"
    ctx = RunContext(progress=progress, cancel=token)
    with pytest.raises(CancelledError, match="the user cancelled"):
        fast.generate(astronaut_png, out, ctx)
    latency = time.monotonic() - cancelled_at[0]
    assert latency < 2.0, f"{stage} stopped {latency:.2f} s after the cancel"
    assert stage not in ctx.timings  # it did not finish
    assert not out.exists() or not any(out.iterdir())  # nothing half-done was written
    # The stages still work after a cancel (the xatlas helper is restarted).
    again = fast.run_stage("analysis", fast_input(fast, astronaut_png))
    assert again.face_score > 0.5


def fast_input(p3d, src):
    from portrait3d.pipelines.types import AnalysisInput

    return AnalysisInput(p3d.load(src))


def test_run_stage_checks_the_input_type_and_the_stages_built(fast, astronaut_png):
    with pytest.raises(TypeError, match="takes a SculptInput"):
        fast.run_stage("sculpt", fast_input(fast, astronaut_png))
    only = Portrait3D(build_profile_config("fast"), stages=("export",))
    with pytest.raises(RuntimeError, match="without the 'analysis' stage"):
        only.analyze(astronaut_png)
    only.close()
    assert only.stages == {}
