"""Profiles: which implementation runs each stage, with the profile's own setting values.

Importing this module imports the built-in stage modules, which register their implementations
(the registry itself imports none of them).

Example:
    >>> PROFILES["fast"].impls["sculpt"]
    'reference_view'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import analysis, export, init, sculpt, sculpt_isd, texture, texture_diffusion  # noqa: F401 (they register)


@dataclass(frozen=True)
class ProfileSpec:
    """Which implementation runs each stage, and the profile's own setting values."""

    impls: dict[str, str]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    needs_models: bool = False  # a model root (--models) is required
    needs_gpu: bool = False  # at its sizes a CPU takes days per head


_PAPER_IMPLS = {
    "analysis": "mediapipe",
    "init": "head_prior",
    "sculpt": "isd_dmtet",
    "texture": "diffusion",
    "export": "glb",
}

PROFILES: dict[str, ProfileSpec] = {
    "fast": ProfileSpec(
        impls={
            "analysis": "mediapipe",
            "init": "head_prior",
            "sculpt": "reference_view",
            "texture": "classical",
            "export": "glb",
        },
        description="CPU, no downloaded weights: mediapipe + dlib analysis, fitted head prior, "
        "reference-view mesh sculpting, back-projection + progressive classical inpainting.",
    ),
    "paper": ProfileSpec(
        impls=_PAPER_IMPLS,
        settings={"analysis": {"identity": "arcface", "caption": "auto"}},
        description="The paper's method with the models of a root (--models ROOT; a GPU): ArcFace identity, ISD "
        "geometry sculpting on DMTet, diffusion texture inpainting and refinement, at the settings "
        "of the authors' release.",
        needs_models=True,
        needs_gpu=True,
    ),
    "tiny": ProfileSpec(
        impls=_PAPER_IMPLS,
        settings={
            "analysis": {"identity": "arcface", "caption": "auto"},
            "init": {"subdivisions": 4},
            "sculpt": {
                "grid_resolution": 32,
                "band": 0.02,
                "steps": 16,
                "normal_fit_steps": 4,
                "render_size": 64,
                "reference_steps": 4,
            },
            "texture": {
                "texture_size": 256,
                "view_size": 64,
                "inpaint_steps": 3,
                "refine_steps": 6,
                "refine_denoise_steps": 2,
            },
        },
        description="The paper profile's code at toy sizes, for a root of tiny models "
        "(`portrait3d models tiny ROOT`): checks the whole path in seconds on a CPU.",
        needs_models=True,
    ),
}


def readiness(profile: str, models: str | None = None) -> list[str]:
    """Why ``profile`` cannot run here (with the model root ``models``, if given): [] when it can."""
    spec = PROFILES[profile]
    why = []
    try:
        import dlib  # noqa: F401
        import mediapipe as mp
        import xatlas  # noqa: F401

        mp.solutions.face_mesh  # noqa: B018 (the legacy models ship only in 0.10.21)
    except Exception as e:  # any import failure is the reason
        why.append(f"{type(e).__name__}: {e}")
    if spec.needs_gpu:
        import torch

        if not torch.cuda.is_available():
            why.append(
                "no CUDA GPU (at the paper's sizes one head takes days on a CPU; `tiny` runs the same code "
                "at toy sizes)"
            )
    if spec.needs_models:
        why += _root_problems(models)
    return why


def _root_problems(models: str | None) -> list[str]:
    if not models:
        return ["no model root (--models ROOT; `portrait3d models check ROOT` lists what one holds)"]
    from ..errors import Portrait3DError
    from .models import check_root

    try:
        states = check_root(models, hashes=False)
    except Portrait3DError as e:
        return [str(e)]
    return [f"model root {models}: role {st.role} is {st.state}" for st in states if st.state in ("missing", "corrupt")]
