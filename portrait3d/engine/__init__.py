"""Ray engine: warm worker pools, the Ray Data batch pipeline, storage.

- ``batch``: ``portrait3d batch``: inputs -> analysis -> geometry -> texture -> export pools -> manifest.
- ``workers``: the pool workers (stage models loaded once per worker).
- ``config``: per-pool resources and sizes, batch settings.
- ``storage``: local paths and ``s3://`` behind one interface; ``heads``: where bundles live.
- ``rows``: the row that travels between pools and the manifest schema.
- ``cluster``: join a Ray cluster or start a local instance.

Imports ``portrait3d.pipelines``; never the other way round.
"""
