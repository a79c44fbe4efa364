"""Collection of the docstring examples under ``portrait3d`` (pytest runs them with the tests)."""

import importlib.util

# The nvdiffrast backend imports nvdiffrast at module level: it exists only where CUDA and nvdiffrast are.
collect_ignore = [] if importlib.util.find_spec("nvdiffrast") else ["portrait3d/pipelines/render/nvdiffrast_backend.py"]
