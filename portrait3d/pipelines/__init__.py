"""The method: plain PyTorch/NumPy, no Ray. Stages, profiles, models, rendering.

``docs/architecture.md`` in the repository describes the layers and the data flow; each module's
docstring says what it holds. Start from :class:`portrait3d.pipelines.pipeline.Portrait3D`.
"""
