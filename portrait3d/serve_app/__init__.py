"""The HTTP service (``portrait3d serve``): a Ray Serve app of a FastAPI ingress and one deployment per
worker pool, with a durable job store."""
