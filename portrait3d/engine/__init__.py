"""Ray engine (issue 3): warm model actors, stage actor pools, Ray Data pipelines, storage.

Imports ``portrait3d.pipelines``; never the other way round. Nothing lives here yet: the stages in
``portrait3d.pipelines`` are already shaped (typed dataclasses in and out, models loaded once in
``__init__``) to become Ray actors without change.
"""
