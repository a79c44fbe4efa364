"""`portrait3d serve` as a person runs it with flags: a process that starts its own local Ray instance
and serves until Ctrl-C; and a bad config file refused. (The repository's config file serves the
whole HTTP suite in test_serve.py.)"""

import subprocess
import sys

import pytest
import requests
import yaml

from .conftest import (
    astronaut,
    free_port,
    png_bytes,
    repository_serve_config,
    serve_process,
    stop_serve_process,
    wait_job,
    wait_ready,
)

pytestmark = pytest.mark.slow


def test_serve_the_tiny_profile_with_flags_makes_a_head_and_stops_on_ctrl_c(tmp_path, tiny_root):
    """The paper profile's code (at toy sizes, on tiny random models) through the service, its geometry
    deployment sculpting two concurrent jobs at once (geometry.heads_per_worker=2)."""
    port = free_port()
    proc = serve_process(
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
        stop_serve_process(proc, tmp_path)
    assert "ready" in (tmp_path / "serve.log").read_text()


def test_a_bad_serve_config_is_refused_before_anything_starts(tmp_path):
    config = repository_serve_config(free_port())
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
