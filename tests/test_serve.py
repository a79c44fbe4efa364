"""The HTTP service as `portrait3d serve --config deploy/serve/serve.yaml` runs it (its own local Ray
instance, Serve, the ingress and the four stage deployments, the embedded SQLite job store), driven
over loopback HTTP: jobs end to end, files and ETags, every bad request's 4xx, auth, limits,
server-sent events, cancel, webhooks, and the web page in Debian's headless Chromium."""

import hashlib
import io
import json
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from .conftest import (
    QUICK_HEAD,
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
TOKEN = "s3cret-token-for-tests"
SLOW = ["sculpt.steps=100000"]  # minutes of sculpting: a job to cancel


@dataclass
class Service:
    url: str
    auth: dict
    data: Path
    inputs: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory, s3_server):
    """``portrait3d serve --config`` with the repository's Serve config file (deploy/serve/serve.yaml),
    its application's args extended for these tests; stopped with Ctrl-C at the end."""
    os.environ["P3D_TEST_TOKEN"] = TOKEN  # the service's process, and its Ray workers, inherit it
    root = tmp_path_factory.mktemp("service")
    inputs = root / "inputs"
    inputs.mkdir()
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    port = free_port()
    config = repository_serve_config(
        port,
        data=str(root / "data"),
        settings=QUICK_HEAD,
        token_env="P3D_TEST_TOKEN",
        input_roots=[str(inputs)],
        max_active_per_client=3,
        webhook_hosts=["127.0.0.1"],
        lease_s=5,
        poll_s=0.25,
    )
    (root / "serve.yaml").write_text(yaml.safe_dump(config))
    proc = serve_process(["--config", str(root / "serve.yaml")], root)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        yield Service(url, {"Authorization": f"Bearer {TOKEN}"}, root / "data", inputs)
    finally:
        stop_serve_process(proc, root)
        os.environ.pop("P3D_TEST_TOKEN", None)


def submit(service, data: bytes | None = None, name="astronaut.png", **fields):
    data = png_bytes(astronaut()) if data is None else data
    form = {k: v for k, v in fields.items() if k != "settings"}
    if "settings" in fields:
        form["options"] = json.dumps({"settings": fields["settings"]})
    return requests.post(
        f"{service.url}/v1/heads",
        files={"image": (name, data, "image/png")},
        data=form,
        headers=service.auth,
        timeout=60,
    )


def test_a_head_end_to_end_is_the_head_generate_makes(service):
    r = submit(service, seed="3")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/heads/{job['id']}" and len(job["id"]) == 32
    assert job["status"] == "queued" and job["stages_done"] == ["analysis"] and job["queue_position"] >= 1
    s = wait_job(service.url, job["id"], headers=service.auth)
    assert s["status"] == "done", s
    assert s["stages_done"] == ["analysis", "geometry", "texture", "export"]
    assert set(s["timings"]) == {"analysis", "init", "sculpt", "texture", "export"}
    files = {}
    for name, kind in (
        ("head.glb", "model/gltf-binary"),
        ("head.json", "application/json"),
        ("views.png", "image/png"),
    ):
        f = requests.get(f"{service.url}{s['files'][name]}", headers=service.auth, timeout=30)
        assert f.status_code == 200 and f.headers["content-type"] == kind
        assert f.headers["etag"] == f'"{hashlib.sha256(f.content).hexdigest()}"'
        again = requests.get(
            f"{service.url}{s['files'][name]}", headers={**service.auth, "If-None-Match": f.headers["etag"]}, timeout=30
        )
        assert again.status_code == 304 and not again.content
        files[name] = f.content
    # The same settings and seed make the same bytes as the in-process pipeline.
    from portrait3d.pipelines.config import build_profile_config
    from portrait3d.pipelines.pipeline import Portrait3D

    with Portrait3D(build_profile_config("fast", QUICK_HEAD, seed=3)) as p3d:
        assert p3d.run(png_bytes(astronaut())).bundle.files["head.glb"] == files["head.glb"]
    assert json.loads(files["head.json"])["config"]["seed"] == 3


def test_json_input_under_an_input_root_and_nowhere_else(service, tmp_path):
    ok = requests.post(
        f"{service.url}/v1/heads",
        json={"input": str(service.inputs / "astronaut.png")},
        headers=service.auth,
        timeout=60,
    )
    assert ok.status_code == 202, ok.text
    done = wait_job(service.url, ok.json()["id"], headers=service.auth)
    assert done["status"] == "done", json.dumps(done)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(service.inputs / "astronaut.png", outside)
    for path in (str(outside), str(service.inputs / ".." / ".." / "elsewhere.png"), "/etc/passwd"):
        r = requests.post(f"{service.url}/v1/heads", json={"input": path}, headers=service.auth, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["type"] == "InputError", (path, r.text)
    r = requests.post(
        f"{service.url}/v1/heads", json={"input": str(service.inputs / "none.png")}, headers=service.auth, timeout=60
    )
    assert r.status_code == 422 and r.json()["error"]["type"] == "ImageReadError"


def _bomb() -> bytes:
    png = png_bytes(np.zeros((1, 1, 3), np.uint8))
    i = png.index(b"IHDR")
    data = struct.pack(">II", 12000, 12000) + png[i + 12 : i + 17]
    return png[: i + 4] + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + png[i + 21 :]


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


BAD_UPLOADS = {
    "not_an_image": (b"just some text, not a photo", {}, 415, "NotAnImageError"),
    "truncated": (_jpeg(astronaut())[:5000], {}, 422, "TruncatedImageError"),
    "bomb": (_bomb(), {}, 413, "ImageTooLargeError"),
    "too_large": (b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20), {}, 413, "ImageTooLargeError"),
    "no_face": (png_bytes(np.full((256, 256, 3), 90, np.uint8)), {}, 422, "NoFaceError"),
    "small_face": (
        png_bytes(np.asarray(Image.fromarray(astronaut()).resize((128, 128)))),
        {},
        422,
        "FaceTooSmallError",
    ),
    "unknown_profile": (None, {"profile": "slow"}, 422, "ConfigError"),
    "bad_setting": (None, {"settings": ["sculpt.steps=-5"]}, 422, "ConfigError"),
    "unknown_setting": (None, {"settings": ["sculpt.nope=1"]}, 422, "ConfigError"),
    "server_setting": (None, {"settings": ["analysis.models=/etc"]}, 422, "ConfigError"),
    "pickle_opt_in": (None, {"settings": ['sculpt.allow_pickle=["unet"]']}, 422, "ConfigError"),
    "bad_seed": (None, {"seed": "-3"}, 400, "BadRequestError"),
    "webhook_elsewhere": (None, {"webhook": "http://example.com/hook"}, 422, "ConfigError"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_a_bad_upload_is_its_4xx_with_a_json_error_and_no_job(service, case):
    data, fields, status, kind = BAD_UPLOADS[case]
    before = requests.get(f"{service.url}/v1/heads", headers=service.auth, timeout=30).json()["total"]
    r = submit(service, data, **fields)
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["type"] == kind and body["status"] == status and body["message"]
    assert requests.get(f"{service.url}/v1/heads", headers=service.auth, timeout=30).json()["total"] == before


def test_bad_paths_and_tokens(service):
    u, auth = service.url, service.auth
    assert requests.get(f"{u}/v1/heads/{'0' * 32}", headers=auth).status_code == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "%2e%2e%2f%2e%2e%2fjobs.sqlite"):
        r = requests.get(f"{u}/v1/heads/{bad}", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["status"] == 404, (bad, r.text)
    assert requests.get(f"{u}/v1/heads/{'0' * 31}g", headers=auth).status_code == 404
    job = submit(service).json()
    r = requests.get(f"{u}/v1/heads/{job['id']}/..%2F..%2F..%2Fjobs.sqlite", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["status"] == 404
    r = requests.get(f"{u}/v1/heads/{job['id']}/input", headers=auth)
    assert r.status_code == 404
    assert wait_job(u, job["id"], headers=auth)["status"] == "done"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (
            ("GET", "/v1/heads"),
            ("GET", f"/v1/heads/{job['id']}"),
            ("GET", f"/v1/heads/{job['id']}/head.glb"),
            ("DELETE", f"/v1/heads/{job['id']}"),
        ):
            r = requests.request(method, f"{u}{path}", headers=headers, timeout=30)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, headers)
            assert r.json()["error"]["type"] == "AuthError"
    assert requests.post(f"{u}/v1/heads", files={"image": ("a.png", png_bytes(astronaut()))}).status_code == 401
    # CORS is off unless configured: no browser on another origin may call the API.
    pre = requests.options(
        f"{u}/v1/heads", headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers
    # The probes and the page need no token.
    assert requests.get(f"{u}/healthz").status_code == 200 and requests.get(f"{u}/readyz").status_code == 200
    assert requests.get(f"{u}/").status_code == 200
    assert "/v1/heads" in requests.get(f"{u}/openapi.json").json()["paths"]
    assert requests.get(f"{u}/docs").status_code == 200


def test_list_pages_newest_first(service):
    ids = [submit(service, seed=str(i)).json()["id"] for i in range(3)]
    for i in ids:
        wait_job(service.url, i, headers=service.auth)
    page = requests.get(f"{service.url}/v1/heads?limit=2", headers=service.auth).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["next_offset"] == 2
    rest = requests.get(f"{service.url}/v1/heads?limit=2&offset=2", headers=service.auth).json()
    assert rest["items"][0]["id"] == ids[0] and rest["total"] == page["total"]
    assert requests.get(f"{service.url}/v1/heads?limit=1000", headers=service.auth).status_code == 400


def test_events_follow_a_job_to_the_end(service):
    # seconds of sculpting, so that the stream is open before the job leaves the geometry stage
    job = submit(service, settings=["sculpt.steps=300"]).json()
    seen = []
    with requests.get(
        f"{service.url}/v1/heads/{job['id']}/events", headers=service.auth, stream=True, timeout=120
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
    statuses = [s["status"] for s in seen]
    assert statuses[-1] == "done" and statuses[0] in ("queued", "running")
    assert {s["stage"] for s in seen} >= {"geometry", "export"}
    assert [s["updated_at"] for s in seen] == sorted(s["updated_at"] for s in seen)  # in order, as it changed


def test_a_cancel_stops_a_running_job_within_seconds_and_the_stage_serves_the_next(service):
    slow = submit(service, settings=SLOW).json()
    s = wait_job(service.url, slow["id"], statuses=("running",), headers=service.auth)
    time.sleep(1.0)  # inside the sculpt loop
    assert s["stage"] == "geometry"
    t0 = time.monotonic()
    r = requests.delete(f"{service.url}/v1/heads/{slow['id']}", headers=service.auth, timeout=30)
    assert r.status_code == 200
    s = wait_job(service.url, slow["id"], headers=service.auth, timeout=30)
    took = time.monotonic() - t0
    assert s["status"] == "cancelled" and s["error"]["type"] == "CancelledError" and took < 5, (s, took)
    again = requests.delete(f"{service.url}/v1/heads/{slow['id']}", headers=service.auth, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["type"] == "JobStateError"
    nxt = submit(service).json()
    assert wait_job(service.url, nxt["id"], headers=service.auth)["status"] == "done"
    with pytest.raises(AssertionError):  # a cancelled job has no files
        f = requests.get(f"{service.url}/v1/heads/{slow['id']}/head.glb", headers=service.auth)
        assert f.status_code == 200


def test_a_client_with_too_many_jobs_gets_429_with_retry_after(service):
    jobs = [submit(service, settings=SLOW).json() for _ in range(3)]
    try:
        r = submit(service)
        assert r.status_code == 429 and r.headers["retry-after"] == "30", r.text
        assert r.json()["error"]["type"] == "TooManyJobsError"
        queued = [j for j in jobs if j["status"] == "queued"]
        assert (
            queued
            and requests.get(f"{service.url}/v1/heads/{jobs[-1]['id']}", headers=service.auth).json()["queue_position"]
            >= 1
        )
    finally:
        for j in jobs:
            requests.delete(f"{service.url}/v1/heads/{j['id']}", headers=service.auth, timeout=30)
    for j in jobs:
        assert wait_job(service.url, j["id"], headers=service.auth, timeout=60)["status"] == "cancelled"


def test_webhook_is_called_on_done(service):
    calls = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            calls.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        job = submit(service, webhook=f"http://127.0.0.1:{server.server_port}/done").json()
        assert wait_job(service.url, job["id"], headers=service.auth)["status"] == "done"
        deadline = time.monotonic() + 20
        while not calls and time.monotonic() < deadline:
            time.sleep(0.1)
        assert calls == [{"id": job["id"], "status": "done", "error_type": "", "error_message": ""}]
    finally:
        server.shutdown()


def _background_share(png: bytes, background=(223, 227, 234)) -> float:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w = img.shape[:2]
    centre = img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3]
    return float((np.abs(centre - background).sum(-1) < 24).mean())


def test_the_web_page_uploads_shows_the_head_and_cancels(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"{service.url}/")
            page.wait_for_selector("#token-box:not([hidden])")  # the API said 401: the page asks for the token
            page.fill("#token", TOKEN)
            page.click("#save-token")
            page.wait_for_selector("#jobs tbody tr")  # the jobs so far
            before = page.locator("#jobs tbody tr").count()
            page.set_input_files("#file", str(service.inputs / "astronaut.png"))
            page.wait_for_function(f"document.querySelectorAll('#jobs tbody tr').length > {before}")
            mine = page.locator("#jobs tbody tr").first.get_attribute("data-id")  # new rows come first
            page.wait_for_selector(f'tr[data-id="{mine}"][data-status="done"]', timeout=120_000)
            page.click(f'tr[data-id="{mine}"] button.view')
            page.wait_for_selector('#viewer[data-loaded="1"]', timeout=60_000)
            page.wait_for_timeout(1500)
            shot = page.locator("#viewer").screenshot()
            assert _background_share(shot) < 0.5, "the viewer shows no head"
            # A second job, cancelled from the page.
            slow = submit(service, settings=SLOW).json()
            page.reload()
            row = f'tr[data-id="{slow["id"]}"]'
            page.wait_for_selector(f"{row} button.cancel:not([hidden])")
            page.click(f"{row} button.cancel")
            page.wait_for_selector(f'{row}[data-status="cancelled"]', timeout=30_000)
        finally:
            browser.close()
    assert wait_job(service.url, slow["id"], headers=service.auth)["status"] == "cancelled"
