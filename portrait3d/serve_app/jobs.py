"""The job store: durable records of the service's head jobs, their queue, progress and leases.

One table through SQLAlchemy, so that the embedded default is a SQLite file under the service's
data folder (no server to install) and production is a PostgreSQL server that every ingress replica
shares (``--store postgresql+psycopg://...``). docs/decisions/job-store.md says why this and not a
task queue library.

- A job is created ``queued`` once its photo passed validation and analysis; its record holds the
  resolved settings, where its files live, and which stages are done.
- Dispatchers *claim* jobs with a lease (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
  LOCKED)``: each job is claimed by one dispatcher at a time; SQLite serializes writers) and renew
  it while they drive the job. A dispatcher that dies stops renewing; once its lease lapses another
  one claims the job and goes on from the last finished stage. That is at-least-once execution:
  stage outputs are written atomically and are the same bytes on a rerun, so a stage that runs
  twice is harmless. Each claim counts an attempt; past ``max_attempts`` the job fails.
- Stage replicas write progress and read the cancel flag through the same store.
- Terminal states (``done``, ``failed``, ``cancelled``) are never left.

Example:
    >>> store = JobStore("sqlite://")                      # in memory
    >>> job = store.create(client="127.0.0.1", spec={"profile": "fast"}, done_stages=["analysis"])
    >>> store.get(job.id).status, store.queue_position(job.id)
    ('queued', 1)
    >>> [j.id for j in store.claim("dispatcher-1", lease_s=30, limit=4)] == [job.id]
    True
    >>> store.claim("dispatcher-2", lease_s=30, limit=4)     # leased: nobody else gets it
    []
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import JobNotFoundError, StorageError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = (DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_meta = sa.MetaData()
_jobs = sa.Table(
    "jobs",
    _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("client", sa.String(128), nullable=False, index=True),
    sa.Column("stage", sa.String(16), nullable=False, default=""),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.String(200), nullable=False, default=""),
    sa.Column("done_stages", sa.JSON, nullable=False),
    sa.Column("stage_runs", sa.JSON, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("error_type", sa.String(64), nullable=False, default=""),
    sa.Column("error_message", sa.Text, nullable=False, default=""),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("timings", sa.JSON, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    sa.Column("notes", sa.JSON, nullable=False),
)


@dataclass(frozen=True)
class Job:
    """One job's record (see the module docstring for the lifecycle)."""

    id: str
    created_at: float
    updated_at: float
    status: str
    client: str
    spec: dict[str, Any]
    stage: str = ""
    progress: float = 0.0
    message: str = ""
    done_stages: list[str] = field(default_factory=list)
    stage_runs: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    error_type: str = ""
    error_message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def new_job_id() -> str:
    """128 random bits as 32 hex digits: not guessable, and safe in a path."""
    return secrets.token_hex(16)


def check_job_id(job_id: str) -> str:
    """``job_id`` when it is 32 lower-case hex digits, else JobNotFoundError (no path can be built from it)."""
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise JobNotFoundError(f"no job {job_id!r}: a job id is 32 hex digits")
    return job_id


def default_store_url(data: str | Path) -> str:
    """The embedded default: a SQLite file in the service's data folder."""
    return f"sqlite:///{Path(data).resolve() / 'jobs.sqlite'}"


class JobStore:
    """The job table at ``url`` (any SQLAlchemy URL; tested with SQLite and PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = _engine(url)
            _meta.create_all(self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise StorageError(f"cannot open the job store {sa.engine.make_url(url).render_as_string()}: {e}") from None
        except ModuleNotFoundError as e:
            raise StorageError(f"the job store {url.split(':', 1)[0]} needs the {e.name} package") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        check_job_id(job_id)
        with self.engine.connect() as c:
            row = c.execute(sa.select(_jobs).where(_jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return _job(row)

    def list(self, limit: int = 20, offset: int = 0, status: str | None = None) -> tuple[list[Job], int]:
        """Newest first: (a page of jobs, the number of jobs in all)."""
        q = sa.select(_jobs)
        n = sa.select(sa.func.count()).select_from(_jobs)
        if status:
            q, n = q.where(_jobs.c.status == status), n.where(_jobs.c.status == status)
        q = q.order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as c:
            return [_job(r) for r in c.execute(q).mappings()], int(c.execute(n).scalar_one())

    def queue_position(self, job: Job | str) -> int | None:
        """1 for the next queued job to start; None unless queued."""
        job = job if isinstance(job, Job) else self.get(job)
        if job.status != QUEUED:
            return None
        q = sa.select(sa.func.count()).where(
            _jobs.c.status == QUEUED,
            sa.or_(
                _jobs.c.created_at < job.created_at, sa.and_(_jobs.c.created_at == job.created_at, _jobs.c.id < job.id)
            ),
        )
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one()) + 1

    def version(self, job_id: str) -> tuple[float, str] | None:
        """(updated_at, status) of a job: what changes when anything of it changes (one small read)."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(_jobs.c.updated_at, _jobs.c.status).where(_jobs.c.id == job_id)).first()
        return None if row is None else (row.updated_at, row.status)

    def count_active(self, client: str | None = None) -> int:
        """Queued and running jobs, of ``client`` or of everyone."""
        q = sa.select(sa.func.count()).where(_jobs.c.status.in_(ACTIVE))
        if client is not None:
            q = q.where(_jobs.c.client == client)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())

    def cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as c:
            v = c.execute(sa.select(_jobs.c.cancel_requested).where(_jobs.c.id == job_id)).scalar_one_or_none()
        return bool(v) if v is not None else True  # a job that is gone is cancelled

    # -- writing ---------------------------------------------------------------------------
    def create(
        self,
        client: str,
        spec: dict[str, Any],
        done_stages: Iterable[str] = (),
        timings: dict[str, float] | None = None,
        notes: Iterable[str] = (),
        job_id: str | None = None,
    ) -> Job:
        now = time.time()
        row = {
            "id": check_job_id(job_id) if job_id else new_job_id(),
            "created_at": now,
            "updated_at": now,
            "status": QUEUED,
            "client": client[:128],
            "stage": "",
            "progress": 0.0,
            "message": "",
            "done_stages": list(done_stages),
            "stage_runs": {},
            "attempts": 0,
            "cancel_requested": False,
            "error_type": "",
            "error_message": "",
            "spec": _json(spec),
            "timings": dict(timings or {}),
            "files": {},
            "notes": list(notes),
        }
        with self.engine.begin() as c:
            c.execute(_jobs.insert().values(**row))
        return self.get(row["id"])

    def claim(self, owner: str, lease_s: float, limit: int) -> list[Job]:
        """Lease up to ``limit`` jobs that need a dispatcher (queued, or active with a lapsed lease),
        oldest first; each claim counts an attempt. A claimed job whose cancel was requested is the
        dispatcher's to finish as cancelled."""
        if limit <= 0:
            return []
        now = time.time()
        claimable = sa.or_(_jobs.c.lease_until.is_(None), _jobs.c.lease_until < now)
        with self.engine.connect() as c:  # a read first: most rounds find nothing, and need no write lock
            if c.execute(sa.select(_jobs.c.id).where(_jobs.c.status.in_(ACTIVE), claimable).limit(1)).first() is None:
                return []
        pick = (
            sa.select(_jobs.c.id)
            .where(_jobs.c.status.in_(ACTIVE), sa.or_(_jobs.c.lease_until.is_(None), _jobs.c.lease_until < now))
            .order_by(_jobs.c.created_at, _jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            _jobs.update()
            .where(_jobs.c.id.in_(pick.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + lease_s, attempts=_jobs.c.attempts + 1, updated_at=now)
            .returning(_jobs.c.id)
        )
        with self.engine.begin() as c:
            ids = [r[0] for r in c.execute(stmt)]
        return sorted((self.get(i) for i in ids), key=lambda j: (j.created_at, j.id))

    def renew(self, owner: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        """Extend ``owner``'s leases; returns the ids it still holds (a job cancelled meanwhile stays held
        until its dispatcher sees that)."""
        ids = list(job_ids)
        if not ids:
            return set()
        now = time.time()
        stmt = (
            _jobs.update()
            .where(_jobs.c.id.in_(ids), _jobs.c.lease_owner == owner, _jobs.c.status.in_(ACTIVE))
            .values(lease_until=now + lease_s)
            .returning(_jobs.c.id)
        )
        with self.engine.begin() as c:
            return {r[0] for r in c.execute(stmt)}

    def count_attempt(self, job_id: str) -> None:
        """One more interruption of the job (a stage replica died under it)."""
        with self.engine.begin() as c:
            c.execute(_jobs.update().where(_jobs.c.id == job_id).values(attempts=_jobs.c.attempts + 1))

    def release(self, owner: str, job_id: str) -> None:
        """Give a lease back at once (a dispatcher shutting down cleanly)."""
        with self.engine.begin() as c:
            c.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id, _jobs.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def stage_started(self, job_id: str, stage: str) -> bool:
        """A stage replica began ``stage``: the job is running; returns whether it was cancelled."""
        now = time.time()
        with self.engine.begin() as c:
            row = c.execute(
                sa.select(_jobs.c.stage_runs, _jobs.c.status, _jobs.c.cancel_requested, _jobs.c.started_at)
                .where(_jobs.c.id == job_id)
                .with_for_update()
            ).first()
            if row is None:
                return True
            if row.status in TERMINAL:
                return True
            runs = dict(row.stage_runs or {})
            runs[stage] = runs.get(stage, 0) + 1
            c.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id)
                .values(
                    status=RUNNING,
                    stage=stage,
                    progress=0.0,
                    message="",
                    stage_runs=runs,
                    updated_at=now,
                    started_at=row.started_at or now,
                )
            )
            return bool(row.cancel_requested)

    def progress(self, job_id: str, stage: str, fraction: float, message: str) -> bool:
        """Record progress within ``stage``; returns whether the job was cancelled."""
        stmt = (
            _jobs.update()
            .where(_jobs.c.id == job_id)
            .values(progress=float(fraction), message=message[:200], updated_at=time.time())
            .returning(_jobs.c.cancel_requested, _jobs.c.status)
        )
        with self.engine.begin() as c:
            row = c.execute(stmt).first()
        return row is None or bool(row.cancel_requested) or row.status in TERMINAL

    def stage_done(
        self, job_id: str, stage: str, timings: dict[str, float], files: dict | None = None, notes: Iterable[str] = ()
    ) -> Job:
        job = self.get(job_id)
        values: dict[str, Any] = {
            "done_stages": [*job.done_stages, stage] if stage not in job.done_stages else job.done_stages,
            "timings": {**job.timings, **timings},
            "progress": 1.0,
            "updated_at": time.time(),
        }
        if files:
            values["files"] = {**job.files, **files}
        if notes:
            values["notes"] = [*job.notes, *notes]
        with self.engine.begin() as c:
            c.execute(_jobs.update().where(_jobs.c.id == job_id, _jobs.c.status.in_(ACTIVE)).values(**values))
        return self.get(job_id)

    def finish(self, job_id: str, status: str, error_type: str = "", error_message: str = "") -> Job:
        """Into a terminal state (once: a terminal job stays as it is)."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status}")
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id, _jobs.c.status.in_(ACTIVE))
                .values(
                    status=status,
                    error_type=error_type,
                    error_message=error_message,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                    message="" if status == DONE else error_message[:200],
                )
            )
        return self.get(job_id)

    def request_cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once (no stage of it has started since analysis); a running one when
        its stage next checks (within seconds)."""
        job = self.get(job_id)
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id, _jobs.c.status.in_(ACTIVE))
                .values(cancel_requested=True, updated_at=now)
            )
            c.execute(
                _jobs.update()
                .where(_jobs.c.id == job_id, _jobs.c.status == QUEUED)
                .values(
                    status=CANCELLED,
                    finished_at=now,
                    error_type="CancelledError",
                    error_message="cancelled by the client",
                    message="cancelled",
                )
            )
        return self.get(job.id)


def _engine(url: str) -> sa.Engine:
    u = sa.engine.make_url(url)
    if u.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, future=True)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    memory = not u.database or u.database == ":memory:"
    engine = sa.create_engine(
        url,
        future=True,
        connect_args={"timeout": 30, "check_same_thread": False},
        poolclass=sa.pool.StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions as SQLAlchemy begins them (below)
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # a write transaction takes the lock at once: claims serialize

    return engine


def _job(row: Any) -> Job:
    names = {f for f in Job.__dataclass_fields__}
    return Job(**{k: v for k, v in dict(row).items() if k in names})


def _json(x: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(x))
