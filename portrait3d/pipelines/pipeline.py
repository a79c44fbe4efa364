"""The whole method in-process: the stages of a profile, each driven through the stage interface.

``Portrait3D`` builds the stages once (models stay warm) and then turns many portraits into heads.
Every stage runs through :meth:`Portrait3D.run_stage`, which seeds the random generators from the
config and turns on deterministic kernels, times the stage, and hands it a
:class:`~portrait3d.pipelines.stage.Reporter` bound to the run's progress callback and
cancellation token. The steps (``analyze``, ``initialize``, ``sculpt``, ``paint``, ``export``) are
the units the engine places on its worker pools; because each stage seeds itself, a head is the
same whether its stages run in one process or in five.

Example:
    >>> with Portrait3D(build_profile_config("fast")) as p3d:              # doctest: +SKIP
    ...     p3d.generate("photo.jpg", "out/", RunContext(progress=print))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import PipelineConfig, build_profile_config
from .image_io import DecodedImage, load_image
from .outputs import check_output_dir, write_bundle
from .registry import STAGES, lookup
from .stage import INTERFACES, CancelToken, Progress, Reporter
from .types import (
    AnalysisInput,
    Bundle,
    ExportInput,
    HeadMesh,
    InitInput,
    PortraitAnalysis,
    SculptInput,
    SculptResult,
    TexturedHead,
    TextureInput,
)


@dataclass
class RunContext:
    """One head's run: where progress goes, the token that cancels it, and the stages' timings (s)."""

    progress: Progress | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    timings: dict[str, float] = field(default_factory=dict)

    def reporter(self, stage: str) -> Reporter:
        return Reporter(stage, self.progress, self.cancel)


@dataclass
class HeadResult:
    """Every stage's output for one portrait."""

    analysis: PortraitAnalysis
    initial: HeadMesh
    sculpt: SculptResult
    head: TexturedHead
    bundle: Bundle
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels for the duration of a stage (multithreaded float accumulation otherwise
    differs in the last bits, and 80 optimization steps amplify that to millimetres).

    ``warn_only``: an op with no deterministic kernel (on CUDA: ``grid_sample`` and ``index_add``
    backward, which the paper profile uses) warns instead of stopping the run. Every op of the
    ``fast`` profile on CPU has one, so its heads stay bit-identical."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)


def build_stage(config: PipelineConfig, stage: str) -> Any:
    """The implementation of ``stage`` that ``config`` names, built from its settings (models load here)."""
    return lookup(stage, config.impls[stage])(config.stages[stage])


class StageCache:
    """Built stages kept by their settings, for a server whose requests may change settings: a request
    gets a :class:`Portrait3D` that shares every stage whose settings equal those of a stage built
    before (configs are frozen and compare by value), and builds only the others. At most
    ``per_stage`` variants of each stage stay built; the least recently used is closed.

    Example:
        >>> cache = StageCache()
        >>> a = cache.driver(build_profile_config("fast", seed=1), ("export",))
        >>> b = cache.driver(build_profile_config("fast", seed=2), ("export",))   # seed: not a stage setting
        >>> a.stages["export"] is b.stages["export"], b.config.seed
        (True, 2)
    """

    def __init__(self, per_stage: int = 2) -> None:
        self.per_stage = per_stage
        self._built: dict[tuple[str, str, Any], Any] = {}

    def driver(self, config: PipelineConfig, stages: tuple[str, ...]) -> Portrait3D:
        built = {}
        for s in stages:
            key = (s, config.impls[s], config.stages[s])
            if key in self._built:
                self._built[key] = self._built.pop(key)  # most recently used last
            else:
                self._built[key] = build_stage(config, s)
                self._evict(s)
            built[s] = self._built[key]
        return Portrait3D(config, stages=stages, built=built)

    def _evict(self, stage: str) -> None:
        keys = [k for k in self._built if k[0] == stage]
        for k in keys[: max(len(keys) - self.per_stage, 0)]:
            self._built.pop(k).close()

    def close(self) -> None:
        for stage in self._built.values():
            stage.close()
        self._built = {}


class Portrait3D:
    """The stages of one profile, built once (models stay warm), driven through the stage interface.

    ``stages`` builds only some stages (a worker pool loads only the models it needs). ``close()``
    (or leaving a ``with`` block) closes every stage.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        stages: tuple[str, ...] | None = None,
        built: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or build_profile_config("fast")
        names = STAGES if stages is None else tuple(stages)
        unknown = set(names) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {list(STAGES)}")
        self.stages: dict[str, Any] = {}
        self._owned = built is None  # stages handed in (a StageCache's) are closed by their owner
        try:
            for s in names:
                self.stages[s] = built[s] if built is not None else build_stage(self.config, s)
        except BaseException:
            self.close()
            raise
        with deterministic_torch():  # its first use imports torch._inductor (~1.4 s): pay it at load time
            pass

    def close(self) -> None:
        if self._owned:
            for stage in self.stages.values():
                stage.close()
        self.stages = {}

    def __enter__(self) -> Portrait3D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_stage(self, name: str, inputs: Any, ctx: RunContext | None = None) -> Any:
        """Run stage ``name`` on its typed ``inputs``: seeded, deterministic, timed into ``ctx.timings``,
        reporting to ``ctx.progress``; raises CancelledError once ``ctx.cancel`` is set."""
        return self._run(name, [inputs], [ctx or RunContext()], lambda stage, ins, reps: [stage(ins[0], reps[0])])[0]

    def _run(self, name: str, inputs: list[Any], ctxs: list[RunContext], call: Any) -> list[Any]:
        """``call(stage, inputs, reporters)`` of stage ``name`` on several heads' typed ``inputs``: seeded
        once (each head draws what a run of its own would), deterministic, timed into every ``ctx``."""
        try:
            stage = self.stages[name]
        except KeyError:
            raise RuntimeError(f"this Portrait3D was built without the {name!r} stage") from None
        want = INTERFACES[name][1]
        for inp in inputs:
            if not isinstance(inp, want):
                raise TypeError(f"the {name} stage takes a {want.__name__}, not a {type(inp).__name__}")
        reports = [c.reporter(name) for c in ctxs]
        for r in reports:
            r(0.0, "")
        t0 = time.perf_counter()
        with deterministic_torch():
            seed_everything(self.config.seed)
            out = call(stage, inputs, reports)
        seconds = round(time.perf_counter() - t0, 3)
        for c in ctxs:
            c.timings[name] = seconds
            if c.progress is not None:
                c.progress(name, 1.0, "")
        return out

    def load(self, src: str | Path | bytes | DecodedImage, name: str | None = None) -> DecodedImage:
        """Decode and validate an input (no model is involved); ``name`` (e.g. the URI bytes came from)
        is used in error messages."""
        if isinstance(src, DecodedImage):
            return src
        return load_image(src, max_megapixels=self.config.stages["analysis"].max_megapixels, name=name)

    def analyze(
        self,
        src: str | Path | bytes | DecodedImage,
        ctx: RunContext | None = None,
        name: str | None = None,
        face: str = "",
    ) -> PortraitAnalysis:
        """Stage 1; ``face``: which face of the photo, for this photo only (as ``analysis.face``)."""
        return self.run_stage("analysis", AnalysisInput(self.load(src, name), face), ctx)

    def initialize(self, analysis: PortraitAnalysis, ctx: RunContext | None = None) -> HeadMesh:
        """Stage 2."""
        return self.run_stage("init", InitInput(analysis), ctx)

    def sculpt(self, analysis: PortraitAnalysis, initial: HeadMesh, ctx: RunContext | None = None) -> SculptResult:
        """Stages 3-4."""
        return self.run_stage("sculpt", SculptInput(analysis, initial), ctx)

    def sculpt_many(
        self, analyses: list[PortraitAnalysis], initials: list[HeadMesh], ctxs: list[RunContext]
    ) -> list[SculptResult]:
        """Stages 3-4 of several heads at once, each as :meth:`sculpt` would make it: a sculpt stage
        with ``sculpt_many`` (the paper profile's batches the heads' ISD through one UNet) takes
        them together, any other one at a time. Timed and reported per head."""
        if len(analyses) == 1 or not hasattr(self.stages.get("sculpt"), "sculpt_many"):
            return [self.sculpt(a, m, c) for a, m, c in zip(analyses, initials, ctxs, strict=True)]
        inputs = [SculptInput(a, m) for a, m in zip(analyses, initials, strict=True)]
        return self._run("sculpt", inputs, ctxs, lambda stage, ins, reps: stage.sculpt_many(ins, reps))

    def paint(self, analysis: PortraitAnalysis, mesh: HeadMesh, ctx: RunContext | None = None) -> TexturedHead:
        """Stage 5."""
        return self.run_stage("texture", TextureInput(analysis, mesh), ctx)

    def export(
        self, analysis: PortraitAnalysis, head: TexturedHead, sculpt_info: dict[str, Any], ctx: RunContext | None = None
    ) -> Bundle:
        """Stage 6: the bundle's files, with the timings of the stages before it from ``ctx``."""
        ctx = ctx or RunContext()
        timings = {s: t for s, t in ctx.timings.items() if s != "export"}
        return self.run_stage("export", ExportInput(analysis, head, sculpt_info, timings, self.provenance()), ctx)

    def provenance(self) -> dict[str, Any]:
        """What head.json records of the settings: profile, resolved config and its fingerprint."""
        return {
            "profile": self.config.profile,
            "config": self.config.to_dict(),
            "config_sha256": self.config.fingerprint(),
        }

    def run(self, src: str | Path | bytes | DecodedImage, ctx: RunContext | None = None) -> HeadResult:
        """Every stage on one portrait; nothing is written."""
        ctx = ctx or RunContext()
        analysis = self.analyze(src, ctx)
        initial = self.initialize(analysis, ctx)
        sculpted = self.sculpt(analysis, initial, ctx)
        head = self.paint(analysis, sculpted.mesh, ctx)
        bundle = self.export(analysis, head, sculpted.info, ctx)
        return HeadResult(
            analysis=analysis, initial=initial, sculpt=sculpted, head=head, bundle=bundle, timings=dict(ctx.timings)
        )

    def generate(
        self, src: str | Path | bytes | DecodedImage, out: str | Path, ctx: RunContext | None = None
    ) -> tuple[HeadResult, dict[str, str]]:
        """Photo -> bundle in ``out``: (the result, ``{file name: path}``). The output folder is checked
        before any work; nothing is written unless every stage finished."""
        check_output_dir(out)
        result = self.run(src, ctx)
        return result, write_bundle(out, result.bundle.files)
