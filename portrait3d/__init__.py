"""portrait3d: one in-the-wild portrait photo to a textured, full 360-degree 3D head.

The method (``portrait3d.pipelines``) is plain PyTorch/NumPy; ``portrait3d.engine`` runs it on Ray,
``portrait3d.serve_app`` serves it over HTTP. ``docs/architecture.md`` in the repository gives the picture.
"""

__version__ = "0.1.0"
