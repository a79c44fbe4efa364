"""`portrait3d serve` as a person runs it: a process that starts its own local Ray instance and serves
until Ctrl-C, with flags or with a Ray Serve config file (the one in deploy/serve)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from .conftest import QUICK_HEAD, astronaut, free_port, png_bytes, wait_job, wait_ready

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _serve(args, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (the process writes it until it ends)
    return subprocess.Popen(
        [sys.executable, "-m", "portrait3d.cli", "serve", *args],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
        cwd=tmp_path,
    )


def _one_head(url):
    r = requests.post(f"{url}/v1/heads", files={"image": ("a.png", png_bytes(astronaut()))}, timeout=60)
    assert r.status_code == 202, r.text
    s = wait_job(url, r.json()["id"])
    assert s["status"] == "done", s
    return requests.get(f"{url}/v1/heads/{s['id']}/head.json", timeout=30).json()


def _stop(proc, tmp_path):
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=90) in (0, 130)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_serve_the_tiny_profile_with_flags_makes_a_head_and_stops_on_ctrl_c(tmp_path, tiny_root):
    """The paper profile's code (at toy sizes, on tiny random models) through the service, its geometry
    deployment sculpting two concurrent jobs at once (geometry.heads_per_worker=2)."""
    port = free_port()
    proc = _serve(
        [
            "--port",
            str(port),
            "--data",
            str(tmp_path / "data"),
            "--profile",
            "tiny",
            "--models",
            str(tiny_root),
            "--set",
            "max_upload_mb=8",
            "--set",
            "together_wait_s=30",  # the second upload's analysis finishes a second or two after the first's
            "--pool",
            "geometry.max_size=1",
            "--pool",
            "geometry.heads_per_worker=2",
        ],
        tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        ids = [
            requests.post(f"{url}/v1/heads", files={"image": ("a.png", png_bytes(img))}, timeout=60).json()["id"]
            for img in (astronaut(), astronaut()[:, ::-1].copy())
        ]
        done = [wait_job(url, i) for i in ids]
        assert [s["status"] for s in done] == ["done", "done"], done
        # Sculpted in one call: both jobs carry that call's time.
        assert done[0]["timings"]["sculpt"] == done[1]["timings"]["sculpt"] > 0
        record = requests.get(f"{url}/v1/heads/{ids[0]}/head.json", timeout=30).json()
        assert record["profile"] == "tiny" and record["config"]["impls"]["sculpt"] == "isd_dmtet"
        assert (tmp_path / "data" / "jobs.sqlite").is_file()  # the embedded store, in the data folder
        big = requests.post(f"{url}/v1/heads", files={"image": ("a.png", b"\x89PNG" + bytes(9 * 2**20))}, timeout=60)
        assert big.status_code == 413  # --set reached the service
    finally:
        _stop(proc, tmp_path)
    assert "ready" in (tmp_path / "serve.log").read_text()


def test_serve_with_the_serve_config_file_of_the_repository(tmp_path):
    config = yaml.safe_load((REPO / "deploy" / "serve" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(data=str(tmp_path / "data"), settings=QUICK_HEAD)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _serve(["--config", str(path)], tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        _one_head(url)
    finally:
        _stop(proc, tmp_path)


def test_a_bad_serve_config_is_refused_before_anything_starts(tmp_path):
    config = yaml.safe_load((REPO / "deploy" / "serve" / "serve.yaml").read_text())
    config["applications"][0]["deployments"][0]["num_replicaz"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    r = subprocess.run(
        [sys.executable, "-m", "portrait3d.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "num_replicaz" in r.stderr and "ConfigError" in r.stderr
