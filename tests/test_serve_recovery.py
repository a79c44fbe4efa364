"""Nothing lost when processes die: the service in its production setting (the job store on a real
PostgreSQL server, the files on an S3 server) on a local Ray instance; a stage replica killed in the
middle of a head, the ingress (and its dispatcher) killed with jobs queued and running, and the whole
Ray instance stopped and started again. Every job ends done, and no finished stage runs again."""

import os
import signal
import time

import psutil
import pytest
import requests

from .conftest import QUICK_HEAD, astronaut, free_port, png_bytes, wait_ready

pytestmark = pytest.mark.slow
# Stages that take a few seconds each here, so that a kill lands inside one.
SETTINGS = [*QUICK_HEAD, "sculpt.steps=120", "texture.texture_size=512", "texture.view_size=160"]


@pytest.fixture(scope="module")
def args(tmp_path_factory, postgres_url, s3_server):
    """The production setting: a PostgreSQL job store and the files on an S3 server (moto)."""
    import boto3
    import sqlalchemy as sa

    with sa.create_engine(postgres_url).begin() as c:
        c.exec_driver_sql("DROP TABLE IF EXISTS jobs")
    boto3.client("s3").create_bucket(Bucket="recovery")
    root = tmp_path_factory.mktemp("recovery")
    return {
        "profile": "fast",
        "data": str(root / "data"),
        "store": postgres_url,
        "storage": "s3://recovery/heads",
        "settings": SETTINGS,
        "lease_s": 3,
        "poll_s": 0.25,
        "max_attempts": 4,
    }


class Service:
    def __init__(self, args):
        self.args, self.url = args, None

    def start(self):
        from portrait3d.serve_app.app import start_local

        self.url = start_local(self.args, "127.0.0.1", free_port())
        wait_ready(self.url)

    def stop(self):
        import ray

        ray.shutdown()  # no graceful drain: every Ray process of the instance ends


@pytest.fixture(scope="module")
def service(args):
    s = Service(args)
    s.start()
    yield s
    s.stop()


def submit(service, seed):
    r = requests.post(
        f"{service.url}/v1/heads",
        files={"image": ("a.png", png_bytes(astronaut()))},
        data={"seed": str(seed)},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def status(service, job_id):
    """The job's status; None while the service does not answer (an ingress being restarted)."""
    try:
        r = requests.get(f"{service.url}/v1/heads/{job_id}", timeout=5)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def wait_for(service, job_id, predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(service, job_id)
        if s is not None and predicate(s):
            return s
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: {status(service, job_id)}")


def kill_replica(deployment):
    """SIGKILL the process of a Serve replica of ``deployment``; its pid."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if f"ServeReplica:portrait3d:{deployment}" in cmd:
            os.kill(proc.info["pid"], signal.SIGKILL)
            return proc.info["pid"]
    raise AssertionError(f"no replica of {deployment} is running")


def test_a_stage_replica_killed_in_the_middle_of_a_head(service):
    job = submit(service, seed=1)
    wait_for(service, job, lambda s: s["stage"] == "texture" and s["status"] == "running")
    time.sleep(0.5)
    kill_replica("texture")
    s = wait_for(service, job, lambda s: s["status"] in ("done", "failed", "cancelled"))
    assert s["status"] == "done", s
    assert s["stage_runs"] == {"geometry": 1, "texture": 2, "export": 1}  # geometry was not done again
    assert s["attempts"] == 2
    # The head is the same bytes as one made without a crash.
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D

    glb = requests.get(f"{service.url}/v1/heads/{job}/head.glb", timeout=30).content
    with Portrait3D(build_profile_config("fast", SETTINGS, seed=1)) as p3d:
        assert p3d.run(png_bytes(astronaut())).bundle.files["head.glb"] == glb


def test_the_ingress_killed_with_jobs_queued_and_running(service):
    jobs = [submit(service, seed=10 + i) for i in range(3)]
    wait_for(service, jobs[0], lambda s: s["status"] == "running" and s["stage"] == "geometry")
    assert status(service, jobs[-1])["status"] == "queued"
    kill_replica("ingress")
    finals = [wait_for(service, j, lambda s: s["status"] in ("done", "failed", "cancelled")) for j in jobs]
    assert [s["status"] for s in finals] == ["done"] * 3, finals
    for s in finals:  # the new dispatcher went on from each job's last finished stage
        assert all(n == 1 for n in s["stage_runs"].values()), s["stage_runs"]
        assert s["stages_done"] == ["analysis", "geometry", "texture", "export"]


def test_the_whole_ray_instance_stopped_and_started_again(service):
    jobs = [submit(service, seed=20 + i) for i in range(3)]
    wait_for(service, jobs[0], lambda s: s["status"] == "running" and s["stage"] in ("texture", "export"))
    before = {j: status(service, j) for j in jobs}
    assert before[jobs[-1]]["status"] == "queued"
    service.stop()
    service.start()  # a new Ray instance, the same job store and files
    finals = [wait_for(service, j, lambda s: s["status"] in ("done", "failed", "cancelled")) for j in jobs]
    assert [s["status"] for s in finals] == ["done"] * 3, finals
    for j, s in zip(jobs, finals, strict=True):
        for stage in before[j]["stages_done"]:  # what was finished before the stop was not run again
            assert s["stage_runs"].get(stage, 0) <= 1, (stage, s["stage_runs"])
        assert requests.get(f"{service.url}/v1/heads/{j}/head.glb", timeout=30).content[:4] == b"glTF"
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="recovery", Prefix="heads/jobs/")["Contents"]]
    assert {f"heads/jobs/{j}/bundle/head.glb" for j in jobs} <= set(keys)  # the results are in object storage
