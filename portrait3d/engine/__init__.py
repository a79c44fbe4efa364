"""Ray engine: warm worker pools and the Ray Data batch pipeline.

- ``batch``: ``portrait3d batch``: inputs -> analysis -> geometry -> texture -> export pools -> manifest.
- ``workers``: the pool workers (stage models loaded once per worker).
- ``config``: per-pool resources and sizes, batch settings.
- ``heads``: where bundles live (through ``portrait3d.storage``, shared with ``pipelines``, which reads
  model roots with it).
- ``rows``: the row that travels between pools and the manifest schema.
- ``cluster``: join a Ray cluster or start a local instance.

Imports ``portrait3d.pipelines``; never the other way round.
"""
