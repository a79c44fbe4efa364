"""Each worker pool's work on one head, shared by the batch workers and the service's stage
deployments: read the pool's inputs from the head's work folder in storage, run the pool's stages
through the stage interface, write the output there (only URIs travel between pools).

A pool whose output is already in storage does nothing: stages are deterministic for a config, so
a rerun would write the same bytes. A head retried after a crash therefore goes on from its last
finished pool; every write is atomic (``storage.write_bytes``), so a crash never leaves half a file.

Example:
    >>> POOL_STAGES["geometry"]
    ('init', 'sculpt')
"""

from __future__ import annotations

import json
from typing import Any

from .. import storage
from ..pipelines.codec import decode, encode
from ..pipelines.outputs import BUNDLE_FILES
from ..pipelines.pipeline import Portrait3D, RunContext
from ..pipelines.types import PortraitAnalysis, SculptResult, TexturedHead
from . import heads

__all__ = [
    "BUNDLE_FILES",
    "OUTPUTS",
    "POOL_STAGES",
    "bundle_done",
    "pool_done",
    "run_analysis",
    "run_export",
    "run_geometry",
    "run_geometry_many",
    "run_texture",
]

#: The pools, in order, and the stages each one runs.
POOL_STAGES: dict[str, tuple[str, ...]] = {
    "analysis": ("analysis",),
    "geometry": ("init", "sculpt"),
    "texture": ("texture",),
    "export": ("export",),
}
#: What each pool leaves in the work folder for the next ones.
OUTPUTS = {"analysis": "analysis.npz", "geometry": "sculpt.npz", "texture": "texture.npz"}


def _read(work_uri: str, pool: str, cls: type) -> Any:
    return decode(storage.read_bytes(storage.join(work_uri, OUTPUTS[pool])), cls)


def pool_done(pool: str, work_uri: str) -> bool:
    """Whether ``pool``'s output is in the work folder."""
    return storage.exists(storage.join(work_uri, OUTPUTS[pool]))


def bundle_done(bundle_uri: str, fingerprint: str) -> bool:
    """Whether a complete bundle made with the settings of ``fingerprint`` is at ``bundle_uri``."""
    return heads.find_bundle(bundle_uri, fingerprint) is not None


def run_analysis(
    p3d: Portrait3D, data: bytes, name: str, work_uri: str, ctx: RunContext, face: str = ""
) -> PortraitAnalysis:
    """Stage 1 on the photo's bytes (``name``: where they came from, for messages; ``face``: which face,
    for this photo only, as ``analysis.face``)."""
    analysis = p3d.analyze(data, ctx, name=name, face=face)
    storage.write_bytes(storage.join(work_uri, OUTPUTS["analysis"]), encode(analysis))
    return analysis


def run_geometry(p3d: Portrait3D, work_uri: str, ctx: RunContext) -> None:
    """Stages 2-4: the head prior fitted to the portrait, then sculpted."""
    if pool_done("geometry", work_uri):
        return
    analysis = _read(work_uri, "analysis", PortraitAnalysis)
    initial = p3d.initialize(analysis, ctx)
    storage.write_bytes(storage.join(work_uri, OUTPUTS["geometry"]), encode(p3d.sculpt(analysis, initial, ctx)))


def run_geometry_many(p3d: Portrait3D, work_uris: list[str], ctxs: list[RunContext]) -> None:
    """Stages 2-4 of several heads, sculpted together (``Portrait3D.sculpt_many``): what each would
    be alone, with the heads' ISD steps through one UNet."""
    todo = [(w, c) for w, c in zip(work_uris, ctxs, strict=True) if not pool_done("geometry", w)]
    analyses = [_read(w, "analysis", PortraitAnalysis) for w, _ in todo]
    initials = [p3d.initialize(a, c) for a, (_, c) in zip(analyses, todo, strict=True)]
    results = p3d.sculpt_many(analyses, initials, [c for _, c in todo])
    for (w, _), result in zip(todo, results, strict=True):
        storage.write_bytes(storage.join(w, OUTPUTS["geometry"]), encode(result))


def run_texture(p3d: Portrait3D, work_uri: str, ctx: RunContext) -> None:
    """Stage 5: the UV texture."""
    if pool_done("texture", work_uri):
        return
    analysis = _read(work_uri, "analysis", PortraitAnalysis)
    sculpted = _read(work_uri, "geometry", SculptResult)
    storage.write_bytes(storage.join(work_uri, OUTPUTS["texture"]), encode(p3d.paint(analysis, sculpted.mesh, ctx)))


def run_export(p3d: Portrait3D, work_uri: str, bundle_uri: str, ctx: RunContext) -> dict[str, Any]:
    """Stage 6: the bundle into ``bundle_uri`` (``head.json`` last); returns the head.json record.
    ``ctx.timings`` holds the earlier stages' timings for the record."""
    record = heads.find_bundle(bundle_uri, p3d.config.fingerprint())
    if record is not None:
        return record
    analysis = _read(work_uri, "analysis", PortraitAnalysis)
    sculpted = _read(work_uri, "geometry", SculptResult)
    head = _read(work_uri, "texture", TexturedHead)
    bundle = p3d.export(analysis, head, sculpted.info, ctx)
    ctx.timings["export"] = bundle.record["timings_s"]["export"]  # the figure head.json gives
    heads.write_head_bundle(bundle_uri, bundle.files)
    return json.loads(bundle.files["head.json"])
