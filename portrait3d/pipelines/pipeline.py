"""The whole method in-process: stages picked by a profile, run in order, bundle written.

``Portrait3D`` builds every stage once (models stay warm) and then turns many portraits into heads.

Example:
    >>> p3d = Portrait3D(build_profile_config("fast"))             # doctest: +SKIP
    >>> result = p3d.run("photo.jpg")                               # doctest: +SKIP
    >>> p3d.write(result, "out/")                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from .config import PipelineConfig, build_profile_config, lookup
from .export import check_output_dir, glb_bytes, json_bytes, png_bytes, write_bundle
from .image_io import DecodedImage, load_image
from .mesh import quality
from .types import HeadMesh, PortraitAnalysis, TexturedHead
from .views import contact_sheet, orbit_views

# progress(stage, fraction of that stage done, message)
Progress = Callable[[str, float, str], None]
STAGE_ORDER = ("analysis", "init", "sculpt", "texture", "export")


@dataclass
class HeadResult:
    analysis: PortraitAnalysis
    head: TexturedHead
    initial: HeadMesh | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sculpt_info: dict[str, Any] = field(default_factory=dict)


def _no_progress(stage: str, frac: float, msg: str) -> None:
    pass


def _timed(stage: str, progress: Progress | None, timings: dict[str, float] | None, fn, /, *args, **kw):
    report = progress or _no_progress
    report(stage, 0.0, "")
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    if timings is not None:
        timings[stage] = round(time.perf_counter() - t0, 3)
    report(stage, 1.0, "")
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_torch():
    """Deterministic kernels for the duration of a run (multithreaded float accumulation otherwise
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


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"portrait3d": __version__, "python": platform.python_version()}
    for name in (
        "torch",
        "numpy",
        "mediapipe",
        "dlib-bin",
        "face-recognition-models",
        "opencv-python-headless",
        "xatlas",
        "trimesh",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


class Portrait3D:
    """The stages of one profile, built once (models stay warm), run as three steps.

    The steps are the units the engine places on separate worker pools: ``analyze`` (stage 1),
    ``shape`` (stages 2-4: init and sculpt) and ``paint`` (stage 5). Each step seeds the random
    generators itself, so a head is the same whether the steps run in one process or in three.
    ``stages`` builds only some stages (a worker pool loads only the models it needs).
    """

    def __init__(self, config: PipelineConfig | None = None, stages: tuple[str, ...] | None = None):
        self.config = config or build_profile_config("fast")
        names = tuple(self.config.impls) if stages is None else tuple(stages)
        unknown = set(names) - set(self.config.impls)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {list(self.config.impls)}")
        self.stages = {s: lookup(s, self.config.impls[s])(self.config.stages[s]) for s in names}
        with deterministic_torch():  # its first use imports torch._inductor (~1.4 s): pay it at load time
            pass

    def _stage(self, name: str):
        try:
            return self.stages[name]
        except KeyError:
            raise RuntimeError(f"this Portrait3D was built without the {name!r} stage") from None

    @contextlib.contextmanager
    def _step(self):
        with deterministic_torch():
            seed_everything(self.config.seed)
            yield

    def analyze(
        self,
        src: str | Path | bytes | DecodedImage,
        progress: Progress | None = None,
        timings: dict[str, float] | None = None,
        name: str | None = None,
    ) -> PortraitAnalysis:
        """Stage 1: decode (unless already decoded) and analyse the portrait; ``name`` (e.g. the URI
        that bytes came from) is used in error messages."""
        image = (
            src
            if isinstance(src, DecodedImage)
            else load_image(src, max_megapixels=self.config.stages["analysis"].max_megapixels, name=name)
        )
        with self._step():
            return _timed("analysis", progress, timings, self._stage("analysis"), image)

    def shape(
        self, analysis: PortraitAnalysis, progress: Progress | None = None, timings: dict[str, float] | None = None
    ) -> tuple[HeadMesh, HeadMesh, dict[str, Any]]:
        """Stages 2-4: ``(initial mesh, sculpted mesh, sculpt info)``."""
        report = progress or _no_progress
        with self._step():
            initial = _timed("init", progress, timings, self._stage("init"), analysis)
            sculpted, info = _timed(
                "sculpt",
                progress,
                timings,
                self._stage("sculpt"),
                analysis,
                initial,
                progress=lambda f, m: report("sculpt", f, m),
            )
        return initial, sculpted, info

    def paint(
        self,
        analysis: PortraitAnalysis,
        mesh: HeadMesh,
        progress: Progress | None = None,
        timings: dict[str, float] | None = None,
    ) -> TexturedHead:
        """Stage 5: the textured head."""
        report = progress or _no_progress
        with self._step():
            return _timed(
                "texture",
                progress,
                timings,
                self._stage("texture"),
                analysis,
                mesh,
                progress=lambda f, m: report("texture", f, m),
            )

    def run(self, src: str | Path | bytes | DecodedImage, progress: Progress | None = None) -> HeadResult:
        timings: dict[str, float] = {}
        analysis = self.analyze(src, progress, timings)
        initial, sculpted, info = self.shape(analysis, progress, timings)
        head = self.paint(analysis, sculpted, progress, timings)
        return HeadResult(analysis=analysis, initial=initial, head=head, timings=timings, sculpt_info=info)

    def bundle(self, result: HeadResult, progress: Progress | None = None) -> dict[str, bytes]:
        """The bundle's files as bytes (nothing written yet)."""
        report = progress or _no_progress
        report("export", 0.0, "")
        t0 = time.perf_counter()
        a, head = result.analysis, result.head
        views = orbit_views(head, a.camera, 256, background=(255, 255, 255))
        files = {"head.glb": glb_bytes(head), "views.png": png_bytes(contact_sheet(views))}
        timings = {**result.timings, "export": round(time.perf_counter() - t0, 3)}
        record = {
            "format": "portrait3d.head/1",
            **a.record(),
            "profile": self.config.profile,
            "config": self.config.to_dict(),
            "config_sha256": self.config.fingerprint(),
            "versions": library_versions(),
            "timings_s": timings,
            "metrics": {
                "mesh": quality(head.mesh.vertices, head.mesh.faces),
                "texture": head.stats,
                "sculpt": result.sculpt_info,
            },
            "axes": {"up": "+Y", "forward": "+Z", "units": "metres", "origin": "head centre"},
        }
        files["head.json"] = json_bytes(record)
        report("export", 1.0, "")
        return files

    def write(self, result: HeadResult, out: str | Path, progress: Progress | None = None) -> dict[str, str]:
        return write_bundle(out, self.bundle(result, progress))

    def generate(self, src, out: str | Path, progress: Progress | None = None) -> dict[str, str]:
        """Photo -> bundle in ``out``. The output folder is checked before any work starts."""
        check_output_dir(out)
        return self.write(self.run(src, progress), out, progress)
