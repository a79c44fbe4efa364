import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait3d.testing import wait_ready  # noqa: F401 (the tests import it from here)

os.environ.setdefault("GLOG_minloglevel", "2")


def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def two_astronauts() -> np.ndarray:
    """The astronaut (512 px, left) beside herself at 384 px (right), on grey: two faces."""
    big = astronaut()
    small = np.asarray(Image.fromarray(big).resize((384, 384), Image.LANCZOS))
    canvas = np.full((512, 512 + 384, 3), 200, np.uint8)
    canvas[:, :512] = big
    canvas[:384, 512:] = small
    return canvas


def grace_hopper_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(astronaut()).save(p)
    return p


@pytest.fixture(scope="session")
def analysis_stage():
    from portrait3d.pipelines.analysis import MediapipeAnalysis

    stage = MediapipeAnalysis(MediapipeAnalysis.Config())
    yield stage
    stage.close()


def analyze(stage, src):
    """Stage 1 on a path or bytes, through the stage interface."""
    from portrait3d.pipelines.image_io import load_image
    from portrait3d.pipelines.stage import Reporter
    from portrait3d.pipelines.types import AnalysisInput

    return stage(AnalysisInput(load_image(src)), Reporter("analysis"))


@pytest.fixture(scope="session")
def astronaut_analysis(analysis_stage, astronaut_png):
    return analyze(analysis_stage, astronaut_png)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A model root of tiny random models of the real classes (about 8 s to build)."""
    from portrait3d.pipelines.models.tiny import build_tiny_root

    return build_tiny_root(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_sculpt(tiny_root):
    """The tiny profile's ``isd_dmtet`` sculpt stage on the tiny root (loaded once per session)."""
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.sculpt_isd import ISDDMTetSculpt

    stage = ISDDMTetSculpt(build_profile_config("tiny", models=str(tiny_root)).stages["sculpt"])
    yield stage
    stage.close()


@pytest.fixture(scope="session")
def tiny_texture(tiny_root):
    """The tiny profile's ``diffusion`` texture stage on the tiny root (loaded once per session)."""
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.texture_diffusion import DiffusionTexture

    stage = DiffusionTexture(build_profile_config("tiny", models=str(tiny_root)).stages["texture"])
    yield stage
    stage.close()


#: Settings that make a head in about 2 s: for tests of plumbing, not of head quality.
QUICK_HEAD = [
    "init.subdivisions=4",
    "sculpt.steps=10",
    "sculpt.resolution=128",
    "texture.texture_size=256",
    "texture.view_size=128",
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback; the AWS environment points at it.

    Session-scoped and set up before any Ray instance that needs it, so that Ray's worker
    processes inherit the environment."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; returns its name."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{_free_port()}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (Debian's postgresql package) on loopback, for the session; its URL.

    As root the server runs as the ``postgres`` user (PostgreSQL refuses root)."""
    import glob
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert bins, "PostgreSQL is not installed: `bash setup.sh` installs Debian's postgresql package"
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="p3d-pg-", dir="/tmp"))
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    return _free_port()


def wait_job(
    url: str, job_id: str, statuses=("done", "failed", "cancelled"), timeout: float = 240, headers=None
) -> dict:
    """Poll a job until its status is one of ``statuses``; returns the status."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = requests.get(f"{url}/v1/heads/{job_id}", headers=headers, timeout=10).json()
        if s["status"] in statuses:
            return s
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not reach {statuses} within {timeout} s: {s}")


REPO = Path(__file__).resolve().parents[1]


def serve_process(args: list[str], cwd: Path):
    """``portrait3d serve ARGS`` as a person runs it: its own process group and local Ray instance,
    its output in ``cwd/serve.log``."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": ""}
    log = open(cwd / "serve.log", "w")  # noqa: SIM115 (the process writes it until it ends)
    return subprocess.Popen(
        [sys.executable, "-m", "portrait3d.cli", "serve", *args],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
        cwd=cwd,
    )


def stop_serve_process(proc, cwd: Path) -> None:
    """Ctrl-C, as a person stops it; it must end cleanly within 90 s and say so."""
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=90) in (0, 130)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped" in (cwd / "serve.log").read_text()


def repository_serve_config(port: int, **args) -> dict:
    """The repository's Serve config file (``deploy/serve/serve.yaml``) on ``port``, with ``args``
    added to the application's."""
    import yaml

    config = yaml.safe_load((REPO / "deploy" / "serve" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"].update(args)
    return config
