"""The job store on the embedded SQLite file and on a real PostgreSQL server: lifecycle, queue order,
leases that one dispatcher at a time holds, takeover after a lapse, cancel, bounded writes."""

import threading
import time

import pytest

from portrait3d.errors import JobNotFoundError
from portrait3d.serve_app.jobs import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    with sa.create_engine(url).begin() as c:  # a clean table per test
        c.exec_driver_sql("DROP TABLE IF EXISTS jobs")
    return url


@pytest.fixture
def store(store_url):
    s = JobStore(store_url)
    yield s
    s.close()


def test_lifecycle_queue_positions_and_terminal_states(store):
    a = store.create("alice", {"n": 1}, ["analysis"], {"analysis": 0.2})
    time.sleep(0.01)
    b = store.create("bob", {"n": 2}, ["analysis"])
    assert [store.queue_position(j.id) for j in (a, b)] == [1, 2]
    assert store.count_active() == 2 and store.count_active("alice") == 1
    assert not store.stage_started(a.id, "geometry")
    assert store.get(a.id).status == "running" and store.queue_position(a.id) is None
    assert store.queue_position(b.id) == 1
    assert not store.progress(a.id, "geometry", 0.5, "step 40/80")
    assert (store.get(a.id).stage, store.get(a.id).progress, store.get(a.id).message) == ("geometry", 0.5, "step 40/80")
    store.stage_done(a.id, "geometry", {"init": 1.0, "sculpt": 2.0})
    done = store.finish(a.id, "done")
    assert done.status == "done" and done.done_stages == ["analysis", "geometry"] and done.finished_at
    assert done.timings == {"analysis": 0.2, "init": 1.0, "sculpt": 2.0} and done.stage_runs == {"geometry": 1}
    # A terminal job stays as it is.
    assert store.finish(a.id, "failed", "X", "y").status == "done"
    assert store.request_cancel(a.id).status == "done"
    jobs, total = store.list(limit=1)
    assert total == 2 and [j.id for j in jobs] == [b.id]  # newest first
    assert [j.id for j in store.list(limit=5, offset=1)[0]] == [a.id]
    assert [j.id for j in store.list(status="done")[0]] == [a.id]


def test_ids_are_random_and_checked(store):
    ids = {store.create("c", {}).id for _ in range(20)}
    assert len(ids) == 20 and all(len(i) == 32 for i in ids)
    for bad in ("../../etc/passwd", "A" * 32, "1' OR '1'='1", "", "0" * 31):
        with pytest.raises(JobNotFoundError):
            store.get(bad)
    with pytest.raises(JobNotFoundError):
        store.get("0" * 32)


def test_one_lease_at_a_time_and_takeover_after_it_lapses(store_url):
    one, two = JobStore(store_url), JobStore(store_url)  # two dispatchers, two connections
    try:
        jobs = [one.create("c", {"i": i}) for i in range(6)]
        got = {}

        def claim(name, s):
            got[name] = s.claim(name, lease_s=30, limit=4)

        threads = [threading.Thread(target=claim, args=(n, s)) for n, s in (("one", one), ("two", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a, b = {j.id for j in got["one"]}, {j.id for j in got["two"]}
        assert not a & b and a | b == {j.id for j in jobs}  # every job claimed, none twice
        assert all(j.attempts == 1 for j in got["one"] + got["two"])
        held = a if len(a) else b
        owner = "one" if held is a else "two"
        assert one.renew(owner, held, lease_s=30) == held
        assert one.claim("three", lease_s=5, limit=10) == []  # all leased
        # The dispatchers die: their leases end (set 50 ms from now, so a slow machine cannot lapse them early).
        for name, ids in (("one", a), ("two", b)):
            assert one.renew(name, ids, lease_s=0.05) == ids
        time.sleep(0.3)
        again = two.claim("three", lease_s=5, limit=10)
        assert {j.id for j in again} == {j.id for j in jobs} and all(j.attempts == 2 for j in again)
        assert one.renew(owner, held, lease_s=5) == set()  # the old owner lost them
    finally:
        one.close()
        two.close()


def test_cancel_a_queued_job_at_once_and_a_running_one_through_its_stage(store):
    queued, running = store.create("c", {}), store.create("c", {})
    store.stage_started(running.id, "texture")
    assert store.request_cancel(queued.id).status == "cancelled"
    r = store.request_cancel(running.id)
    assert r.status == "running" and r.cancel_requested
    assert store.progress(running.id, "texture", 0.3, "view 2/15")  # the stage learns of it here
    assert store.cancel_requested(running.id)
    assert store.stage_started(queued.id, "geometry")  # a cancelled job's stage does not start
    # A claimed job whose cancel was requested is handed out, for its dispatcher to finish as cancelled.
    assert [j.cancel_requested for j in store.claim("d", 5, 10)] == [True]
    assert store.finish(running.id, "cancelled", "CancelledError", "cancelled by the client").status == "cancelled"


def test_a_store_that_cannot_be_reached_is_a_typed_error():
    from portrait3d.errors import StorageError

    with pytest.raises(StorageError, match="job store"):
        JobStore("postgresql+psycopg://nobody@127.0.0.1:9/none")


def test_postgresql_from_libpq_environment(postgres_url, monkeypatch):
    """The Kubernetes manifests' store URL is `postgresql+psycopg://` with host, port, user, database
    and password in libpq's PG* variables (the password from a Secret): no credential in a URL."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    for var, value in {"PGHOST": url.host, "PGPORT": str(url.port), "PGUSER": url.username}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("PGDATABASE", url.database)
    s = JobStore("postgresql+psycopg://")
    try:
        job = s.create("k8s", {"n": 1}, ["analysis"])
        assert s.get(job.id).client == "k8s"
    finally:
        s.close()
