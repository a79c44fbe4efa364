"""Ray Serve HTTP app (FastAPI ingress composed with per-stage deployments). Not built yet."""
