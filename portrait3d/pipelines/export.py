"""Stage 6, export: the head bundle (``head.glb``, ``head.json``, ``views.png``) as bytes
(``outputs`` writes it).

``head.glb`` is glTF 2.0 binary: +Y up, metres, the face toward +Z, the head centred at the origin,
the base-colour texture embedded.

The stages build the head in the face's own frame (up from chin to forehead). A portrait's camera is
level (its horizon is horizontal), so whatever elevation the photo's camera has in that frame is the
head's own pitch: export turns the head by it (up to ``level_max_deg``, 30 degrees by default), so
that the head stands as photographed and its front view at eye level is the photo's view.
``head.json`` (``axes.levelled_deg``) says by how much; the reference camera, landmarks and pose in it
are in the exported frame.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace

import trimesh
from PIL import Image

from .. import __version__
from .camera import LEVEL_MAX_DEG, leveling_rotation, ypr_from_rotation
from .mesh import quality
from .outputs import json_bytes, png_bytes
from .registry import register
from .settings import setting
from .stage import Reporter
from .types import Bundle, ExportInput, PortraitAnalysis, TexturedHead
from .views import contact_sheet, orbit_views

FORMAT = "portrait3d.head/1"
AXES = {"up": "+Y", "forward": "+Z", "units": "metres", "origin": "head centre"}


@register("export", "glb")
class GlbExport:
    """``head.glb``, ``views.png`` (renders at the reference camera's distance) and ``head.json``."""

    @dataclass(frozen=True)
    class Config:
        view_size: int = setting(256, "side of each render in views.png, pixels", ge=32, le=2048)
        level_max_deg: float = setting(
            LEVEL_MAX_DEG,
            "turn the head by the photo camera's elevation, up to this many degrees, so that it stands as "
            "photographed (a portrait's camera is level) and its eye-level front view is the photo's; "
            "0 keeps the face's own frame (chin-to-forehead vertical)",
            ge=0,
            le=90,
        )

    def __init__(self, cfg: GlbExport.Config) -> None:
        self.cfg = cfg

    def close(self) -> None:
        pass

    def __call__(self, inputs: ExportInput, report: Reporter) -> Bundle:
        t0 = time.perf_counter()
        a, head, levelled = level_with_camera(inputs.analysis, inputs.head, self.cfg.level_max_deg)
        views = orbit_views(head, a.camera, self.cfg.view_size, background=(255, 255, 255))
        report(0.3, "head.glb")
        files = {"head.glb": glb_bytes(head), "views.png": png_bytes(contact_sheet(views))}
        timings = {**inputs.timings, "export": round(time.perf_counter() - t0, 3)}
        record = {
            "format": FORMAT,
            **a.record(),
            **inputs.provenance,
            "versions": library_versions(),
            "timings_s": timings,
            "metrics": {
                "mesh": quality(head.mesh.vertices, head.mesh.faces),
                "texture": head.stats,
                "sculpt": inputs.sculpt_info,
            },
            "axes": {**AXES, "levelled_deg": round(levelled, 3)},
        }
        files["head.json"] = json_bytes(record)
        return Bundle(files=files, record=record)


def level_with_camera(
    a: PortraitAnalysis, head: TexturedHead, max_deg: float
) -> tuple[PortraitAnalysis, TexturedHead, float]:
    """The analysis and head turned about the head centre so that the reference camera is at
    elevation 0 (at most ``max_deg``), and the angle turned in degrees. Every pixel of the reference
    view sees the same point as before."""
    L, angle = leveling_rotation(a.camera.center, max_deg)
    rotation = a.rotation @ L.T
    a = replace(
        a,
        camera=replace(a.camera, R=a.camera.R @ L.T),
        rotation=rotation,
        pose_ypr=ypr_from_rotation(rotation),
        landmarks_3d=a.landmarks_3d @ L.T,
    )
    mesh = replace(head.mesh, vertices=(head.mesh.vertices @ L.T).astype(head.mesh.vertices.dtype))
    return a, replace(head, mesh=mesh), angle


def library_versions() -> dict[str, str]:
    """Versions of portrait3d, Python and the libraries a head depends on."""
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


def glb_bytes(head: TexturedHead) -> bytes:
    """The textured mesh as glTF binary bytes (deterministic for the same input)."""
    mat = trimesh.visual.material.PBRMaterial(
        name="head", baseColorTexture=Image.fromarray(head.texture), metallicFactor=0.0, roughnessFactor=0.9
    )
    visual = trimesh.visual.TextureVisuals(uv=head.uv, material=mat)
    mesh = trimesh.Trimesh(
        vertices=head.mesh.vertices[head.uv_to_vertex], faces=head.uv_faces, visual=visual, process=False
    )
    return trimesh.Scene(geometry={"head": mesh}).export(file_type="glb")
