"""Random views as the authors' release (ID-Sculpt, a threestudio fork) samples them, and the names of
view directions its prompts use.

The release works in threestudio's normalised frame: the initial mesh is centred on its vertex mean
and scaled so that its largest absolute coordinate is 0.9 (``shape_init_params``); its camera ranges
(distance 3.5-4.5 for geometry, 2.5-3.5 for texture refinement) are absolute values in that frame,
looking at its origin. :func:`release_frame` gives that frame for a mesh in metres, so the same
ranges frame our heads as they framed the release's.

Example:
    >>> import numpy as np
    >>> frame = release_frame(np.array([[-0.1, 0, 0], [0.1, 0, 0], [0, 0.12, 0], [0, -0.12, 0]]))
    >>> round(frame.metres_per_unit, 4)
    0.1333
    >>> cam = random_view(np.random.default_rng(0), ViewRanges((-15, 45), (-180, 180), (3.5, 4.5), (25, 45)), frame, 64)
    >>> bool(3.5 <= np.linalg.norm(cam.center - frame.centre) / frame.metres_per_unit <= 4.5)
    True
    >>> view_direction(10, 0), view_direction(100, 0), view_direction(-150, 0), view_direction(0, 70)
    ('front', 'side', 'back', 'overhead')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import Camera

SHAPE_INIT_EXTENT = 0.9  # threestudio's shape_init_params in the release's geometry config
RELEASE_GRID_CELL = 2 * 2.0 / 512  # its DMTet cell: a grid of radius 2.0 at isosurface_resolution 512


@dataclass(frozen=True)
class ReleaseFrame:
    """threestudio's normalised frame of a mesh: ``x_release = (x_metres - centre) / metres_per_unit``."""

    centre: np.ndarray  # (3,) metres
    metres_per_unit: float

    def to_units(self, v: np.ndarray) -> np.ndarray:
        return (np.asarray(v) - self.centre) / self.metres_per_unit

    def laplacian_scale(self, cell_metres: float) -> float:
        """The factor that keeps the release's Laplacian weight in balance on a grid of another cell size:
        the mean ``|L v|`` of a marching-tetrahedra mesh grows with the cell (its vertices scatter
        within cells), so the weight goes with ``release cell / our cell``."""
        return RELEASE_GRID_CELL / (cell_metres / self.metres_per_unit)


def release_frame(vertices: np.ndarray, extent: float = SHAPE_INIT_EXTENT) -> ReleaseFrame:
    """The frame in which ``vertices (N, 3)`` (metres), centred on their mean, reach ``extent`` at most."""
    v = np.asarray(vertices, np.float64)
    centre = v.mean(0)
    return ReleaseFrame(centre=centre, metres_per_unit=float(np.abs(v - centre).max()) / extent)


@dataclass(frozen=True)
class ViewRanges:
    """Uniform ranges of a random view: elevation and azimuth (degrees; azimuth 0 looks at the face,
    positive elevation from above), distance (release units) and vertical field of view (degrees)."""

    elevation: tuple[float, float]
    azimuth: tuple[float, float]
    distance: tuple[float, float]
    fovy: tuple[float, float]


def random_view(rng: np.random.Generator, ranges: ViewRanges, frame: ReleaseFrame, size: int) -> Camera:
    """A camera of ``ranges`` around the frame's origin, ``size`` pixels square."""
    elev = rng.uniform(*ranges.elevation)
    azim = rng.uniform(*ranges.azimuth)
    dist = rng.uniform(*ranges.distance) * frame.metres_per_unit
    fovy = rng.uniform(*ranges.fovy)
    return Camera.orbit(azim, elev, dist, fovy, size, target=frame.centre)


def view_angles(cam: Camera, target: np.ndarray | None = None) -> tuple[float, float]:
    """(azimuth, elevation) in degrees of ``cam`` around ``target`` (the origin by default), as
    :meth:`Camera.orbit` takes them: azimuth 0 in front of the face, +90 at the person's left."""
    d = cam.center - (np.zeros(3) if target is None else np.asarray(target, np.float64))
    azimuth = math.degrees(math.atan2(d[0], d[2]))
    elevation = math.degrees(math.asin(float(np.clip(d[1] / max(np.linalg.norm(d), 1e-12), -1, 1))))
    return azimuth, elevation


def view_direction(
    azimuth: float, elevation: float, front: float = 45.0, back: float = 60.0, overhead: float = 60.0
) -> str:
    """threestudio's view-dependent prompt direction: ``front`` within ``front`` degrees of the face,
    ``back`` within ``back`` degrees of the back of the head, ``overhead`` above ``overhead`` degrees of
    elevation (which wins), else ``side``."""
    a = (azimuth + 180.0) % 360.0 - 180.0
    name = "side"
    if -front < a < front:
        name = "front"
    if a > 180.0 - back or a < -180.0 + back:
        name = "back"
    if elevation > overhead:
        name = "overhead"
    return name
