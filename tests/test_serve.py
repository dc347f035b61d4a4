"""`muratune serve`: Ray Serve + FastAPI on loopback; answers equal StudyPredictor's, limits, errors, the page."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import requests

from muratune.cli import main
from muratune.ensemble.calibration import calibrate
from muratune.ensemble.predictor import StudyPredictor
from muratune.errors import UserError
from muratune.schemas import read_ensemble_spec
from muratune.serve.app import LocalBackend, ServeLimits, create_app
from muratune.serve.guard import ServeAccess
from muratune.serve.service import StudyService, Upload
from tests.helpers.files import bomb_png, tree_digest

pytestmark = pytest.mark.slow

LIMIT_BYTES = 3 * 1024 * 1024
STALL_S = 2.0  # the test server's body read timeout
STALLED = 20  # stalled uploads held open at once (Ray Serve's default ingress had 5 request slots)
CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ensemble(tiny_experiment: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A greedy ensemble with per-body-part thresholds, built in a copy of the tiny experiment."""
    from muratune.ensemble.build import build_ensembles

    exp = tmp_path_factory.mktemp("serve") / "tiny"
    shutil.copytree(tiny_experiment, exp)
    build_ensembles(exp, size=2, strategies=["greedy"], tune_thresholds=True, calibrate=True, echo=lambda _: None)
    return exp / "ensemble" / "greedy"


@pytest.fixture(scope="module")
def server(ray_session, ensemble: Path) -> str:
    """The ensemble served by Ray Serve on a free loopback port (small request limit, to test 413)."""
    from ray import serve

    from muratune.serve.deploy import ServeOptions, start_server

    limits = ServeLimits(max_request_bytes=LIMIT_BYTES, max_files=4, body_idle_s=STALL_S)
    options = ServeOptions(port=_free_port(), limits=limits)
    url = start_server(ensemble, options)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def study(synthetic_root: Path) -> list[Path]:
    """The views of one multi-view wrist study of the test split."""
    lines = (synthetic_root / "MURA-v1.1" / "valid_image_paths.csv").read_text().split()
    frame = pd.DataFrame({"image_path": lines, "study": [line.rsplit("/", 1)[0] for line in lines]})
    wrist = frame[frame["study"].str.contains("XR_WRIST")]
    counts = wrist["study"].value_counts()
    chosen = counts[counts > 1].index[0]
    return [synthetic_root / p for p in wrist.loc[wrist["study"] == chosen, "image_path"]]


def _files(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    names = names or [p.name for p in paths]
    return [("files", (name, p.read_bytes(), "image/png")) for name, p in zip(names, paths, strict=True)]


def test_predict_equals_the_study_predictor(server, ensemble, study):
    response = requests.post(f"{server}/predict", files=_files(study), data={"body_part": "wrist"}, timeout=120)
    assert response.status_code == 200, response.text
    got = response.json()
    expected = StudyPredictor.load(ensemble, device="cpu").predict_study(study, "XR_WRIST")
    assert got["prob"] == pytest.approx(expected["prob"], abs=1e-6)
    assert [v["prob"] for v in got["views"]] == pytest.approx(expected["view_probs"], abs=1e-6)
    assert got["label"] == expected["label"] and got["threshold"] == pytest.approx(expected["threshold"])
    calibration = read_ensemble_spec(ensemble / "ensemble.json").calibration
    assert calibration is not None  # the served probability is the calibrated mean of the views
    mean_of_views = np.array([np.mean([v["prob"] for v in got["views"]])])
    assert got["prob"] == pytest.approx(float(calibrate(mean_of_views, ["XR_WRIST"], calibration)[0]), abs=1e-6)
    assert got["body_part"] == "XR_WRIST" and got["body_part_source"] == "given"
    assert got["verdict"] == ("abnormal" if got["label"] else "normal")
    for view, path in zip(got["views"], study, strict=True):
        height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
        assert (view["width"], view["height"]) == (width, height)
        assert 0 <= view["peak"]["x"] < width and 0 <= view["peak"]["y"] < height
        box = view["box"]
        assert 0 <= box["x0"] < box["x1"] <= width and 0 <= box["y0"] < box["y1"] <= height
        assert "overlay_png" not in view


def test_concurrent_requests_all_succeed_with_the_same_answer(server, study):
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> requests.Response:
        return requests.post(f"{server}/predict", files=_files(study), data={"body_part": "wrist"}, timeout=180)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(post, range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    probs = {round(r.json()["prob"], 6) for r in responses}
    assert len(probs) == 1


def test_body_part_is_inferred_from_the_uploaded_path(server, ensemble, study):
    names = ["MURA-v1.1/valid/XR_WRIST/patient1/study1_positive/" + p.name for p in study]
    got = requests.post(f"{server}/predict", files=_files(study, names), timeout=120).json()
    assert got["body_part"] == "XR_WRIST" and got["body_part_source"] == "inferred"
    assert got["threshold"] == pytest.approx(StudyPredictor.load(ensemble, device="cpu").threshold("XR_WRIST"))


def test_cam_returns_one_overlay_png_per_view(server, study):
    got = requests.post(f"{server}/cam", files=_files(study), data={"body_part": "auto"}, timeout=120).json()
    assert len(got["views"]) == len(study)
    for view in got["views"]:
        png = base64.b64decode(view["overlay_png"])
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[1] == view["width"] and image.shape[0] > view["height"]  # caption band on top
        assert image.shape[2] == 3


def test_a_file_that_is_not_an_image_gets_422_naming_it(server, study):
    files = _files(study[:1]) + [("files", ("notes.png", b"this is text, not a PNG", "image/png"))]
    response = requests.post(f"{server}/predict", files=files, timeout=120)
    assert response.status_code == 422
    assert "notes.png" in response.json()["detail"] and "not a PNG, JPEG or DICOM file" in response.json()["detail"]
    truncated = study[0].read_bytes()[:200]
    response = requests.post(f"{server}/predict", files=[("files", ("cut.png", truncated, "image/png"))], timeout=60)
    assert response.status_code == 422 and "cut.png" in response.json()["detail"]


def test_bad_form_values_get_422(server, study):
    response = requests.post(f"{server}/predict", files=_files(study[:1]), data={"body_part": "knee"}, timeout=60)
    assert response.status_code == 422 and "knee" in response.json()["detail"]
    assert requests.post(f"{server}/predict", timeout=60).status_code == 422  # no files at all
    five = _files([study[0]] * 5)
    response = requests.post(f"{server}/predict", files=five, timeout=60)
    assert response.status_code == 422 and "at most 4" in response.json()["detail"]


def test_an_oversize_request_gets_413(server):
    blob = os.urandom(LIMIT_BYTES + 1024)
    response = requests.post(f"{server}/predict", files=[("files", ("big.png", blob, "image/png"))], timeout=60)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_health_info_and_openapi(server, ensemble):
    assert requests.get(f"{server}/health", timeout=30).json() == {"status": "ok"}
    info = requests.get(f"{server}/info", timeout=30).json()
    predictor = StudyPredictor.load(ensemble, device="cpu")
    assert [m["name"] for m in info["members"]] == [m.name for m in predictor.members]
    assert info["thresholds"] == pytest.approx(predictor.thresholds) and info["muratune_version"]
    assert all(m["backbone"] == "resnet10t" and m["cam"].startswith("layercam@") for m in info["members"])
    assert predictor.calibration is not None and info["calibration"] == predictor.calibration.model_dump()
    paths = requests.get(f"{server}/openapi.json", timeout=30).json()["paths"]
    assert {"/predict", "/cam", "/health", "/info"} <= set(paths)
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "not a diagnosis" in page.text and "http" not in page.text.split("<script>")[1]


def test_uploads_leave_no_files_behind(server, study):
    before = {p.name for p in Path(tempfile.gettempdir()).glob("muratune-serve-*")}
    assert requests.post(f"{server}/predict", files=_files(study), timeout=120).status_code == 200
    assert (
        requests.post(f"{server}/predict", files=[("files", ("x.png", b"junk", "image/png"))], timeout=60).ok is False
    )
    assert {p.name for p in Path(tempfile.gettempdir()).glob("muratune-serve-*")} == before


def test_the_server_listens_on_loopback_only(server):
    import psutil

    port = int(server.rsplit(":", 1)[1])
    listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and set(listening) <= {"127.0.0.1"}


def test_service_rejects_an_empty_study(ensemble):
    from muratune.serve.service import InvalidUpload

    with pytest.raises(InvalidUpload, match="no images"):
        StudyService(ensemble, device="cpu").analyse([])


def test_service_reads_grayscale_and_rgb_uploads_alike(ensemble, study):
    service = StudyService(ensemble, device="cpu")
    gray = cv2.imread(str(study[0]), cv2.IMREAD_GRAYSCALE)
    ok, rgb_png = cv2.imencode(".png", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    assert ok
    from_gray = service.analyse([Upload("a.png", study[0].read_bytes())], "wrist")
    from_rgb = service.analyse([Upload("a.png", rgb_png.tobytes())], "wrist")
    assert from_rgb["prob"] == pytest.approx(from_gray["prob"], abs=1e-6)


def test_cam_shifts_trade_cam_passes_for_the_same_probability(ensemble, study):
    """--cam-shifts 1 turns shift averaging off: the same probability, one CAM pass per view instead of four."""
    uploads = [Upload(p.name, p.read_bytes()) for p in study]
    averaged, single = StudyService(ensemble, device="cpu"), StudyService(ensemble, device="cpu", cam_shifts=1)
    assert all("2x2 shifts" in m["cam"] for m in averaged.info()["members"])
    assert all("shifts" not in m["cam"] for m in single.info()["members"])
    assert single.analyse(uploads)["prob"] == pytest.approx(averaged.analyse(uploads)["prob"], abs=1e-6)


def test_serve_refuses_cam_shifts_out_of_range(ensemble, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(ensemble), "--cam-shifts", "0"])
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_replicas_asking_for_more_gpus_than_the_cluster_has_are_refused(ray_session):
    from muratune.errors import UserError
    from muratune.serve.deploy import ServeOptions, check_replica_resources

    check_replica_resources(ServeOptions(cpus_per_replica=1))
    with pytest.raises(UserError, match="--gpus-per-replica 1: the Ray cluster has 0 GPU"):
        check_replica_resources(ServeOptions(gpus_per_replica=1))


def test_serve_refuses_a_folder_that_is_not_an_ensemble(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err and err.count("\n") == 1


def test_the_page_uploads_a_study_and_shows_verdict_and_overlays(server, study, tmp_path):
    """Headless Debian Chromium driven by Playwright: choose files, press the button, see the result."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for this test")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server}/")
            assert "not a diagnosis" in page.inner_text("#disclaimer")
            page.select_option("#body_part", "wrist")
            page.set_input_files("#files", [str(p) for p in study])
            page.click("#submit")
            page.wait_for_selector("#verdict-label", timeout=120_000)
            page.wait_for_function(
                "document.querySelectorAll('img.overlay').length > 0 && "
                "Array.from(document.querySelectorAll('img.overlay')).every(i => i.naturalWidth > 0)"
            )
            verdict = page.inner_text("#verdict-label")
            confidence = page.inner_text("#confidence")
            overlays = page.locator("img.overlay").count()
            page.screenshot(path=str(OUTPUT / "serve_page.png"), full_page=True)
        finally:
            browser.close()
    assert verdict in ("Abnormal", "Normal")
    assert "probability of abnormality" in confidence and "wrist" in confidence
    assert overlays == len(study)
    assert (OUTPUT / "serve_page.png").stat().st_size > 10_000


# --------------------------------------------------------------------------------------------- safety
ORIGIN = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def service(ensemble: Path) -> StudyService:
    return StudyService(ensemble, device="cpu")


def _client(service: StudyService, limits: ServeLimits | None = None, access: ServeAccess | None = None):
    from fastapi.testclient import TestClient

    return TestClient(create_app(LocalBackend(service), limits, access), base_url=ORIGIN)


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(service, tmp_path):
    from PIL import Image

    from muratune.data.images import MAX_PIXELS

    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # our cap applies before Pillow's own limit
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    before = tree_digest(bomb)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own warning is not silenced
        response = _client(service).post("/predict", files=[("files", ("bomb.png", bomb.read_bytes(), "image/png"))])
    assert response.status_code == 413
    assert response.json()["detail"].startswith("bomb.png: image too large (13000x13000 pixels")
    assert tree_digest(bomb) == before


def test_views_above_the_request_pixel_budget_are_refused_naming_the_file(service, study):
    before = [tree_digest(view) for view in study]
    view_pixels = int(np.prod(cv2.imread(str(study[0]), cv2.IMREAD_UNCHANGED).shape[:2]))
    limits = ServeLimits(max_request_pixels=view_pixels + view_pixels // 2)
    files = _files(study[:2], ["first.png", "second.png"])
    response = _client(service, limits).post("/predict", files=files)
    assert response.status_code == 413 and response.json()["detail"].startswith("second.png: ")
    assert "limit for one request" in response.json()["detail"]
    small = ServeLimits(max_pixels=view_pixels - 1)
    response = _client(service, small).post("/predict", files=_files(study[:1], ["one.png"]))
    assert response.status_code == 413 and response.json()["detail"].startswith("one.png: image too large")
    assert [tree_digest(view) for view in study] == before


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_formats_other_than_png_and_jpeg_are_refused_whatever_the_name(service, study, fmt, tmp_path):
    from PIL import Image

    path = tmp_path / "view.png"  # named .png on purpose
    Image.open(study[0]).save(path, format=fmt)
    before = tree_digest(path)
    response = _client(service).post("/predict", files=_files([path]))
    assert response.status_code == 422 and response.json()["detail"] == "view.png: not a PNG, JPEG or DICOM file"
    assert tree_digest(path) == before


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io"])
def test_a_foreign_host_header_gets_400(service, study, host):
    client = _client(service)
    assert client.get("/health", headers={"Host": host}).status_code == 400
    response = client.post("/predict", files=_files(study[:1]), headers={"Host": host})
    assert response.status_code == 400


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "mura.lan:8000"])
def test_loopback_names_and_allowed_hosts_are_served(service, host):
    client = _client(service, access=ServeAccess(allowed_hosts=("mura.lan",)))
    assert client.get("/health", headers={"Host": host}).status_code == 200


def test_a_cross_origin_post_gets_403_and_same_origin_or_no_origin_is_served(service, study):
    client = _client(service)
    for origin in ("http://attacker.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1.evil.example"):
        response = client.post("/predict", files=_files(study[:1]), headers={"Origin": origin})
        assert response.status_code == 403, origin
        assert "cross-origin" in response.json()["detail"]
    assert client.post("/predict", files=_files(study[:1]), headers={"Origin": ORIGIN}).status_code == 200
    assert client.post("/predict", files=_files(study[:1])).status_code == 200  # curl, Python: no Origin


def test_binding_beyond_loopback_needs_an_api_key(service, ensemble, capsys):
    with pytest.raises(UserError, match="--host 0.0.0.0: binding beyond loopback needs an API key"):
        create_app(LocalBackend(service), access=ServeAccess(host="0.0.0.0"))
    digest = tree_digest(ensemble)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(ensemble), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "MURATUNE_API_KEY" in err and "Traceback" not in err
    assert tree_digest(ensemble) == digest


def test_the_api_key_is_checked_on_every_api_route(service, study):
    client = _client(service, access=ServeAccess(host="0.0.0.0", allowed_hosts=("mura.lan",), api_key="s3cret"))
    host = {"Host": "mura.lan:8000"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cret "}):
        assert client.get("/health", headers={**host, **headers}).status_code == 401
        assert client.get("/info", headers={**host, **headers}).status_code == 401
        for route in ("/predict", "/cam"):
            assert client.post(route, files=_files(study[:1]), headers={**host, **headers}).status_code == 401
    for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
        assert client.get("/info", headers={**host, **headers}).status_code == 200
        assert client.post("/predict", files=_files(study[:1]), headers={**host, **headers}).status_code == 200
    assert client.get("/", headers=host).status_code == 200  # the page asks for the key itself


def test_the_printed_url_is_the_bound_address_with_a_warning_beyond_loopback():
    from muratune.serve.deploy import ServeOptions

    assert ServeOptions().url == "http://127.0.0.1:8000" and len(ServeOptions().banner("ens")) == 1
    exposed = ServeOptions(host="0.0.0.0", port=8080, api_key="k")
    lines = exposed.banner("ens")
    assert exposed.url == "http://0.0.0.0:8080" and "http://0.0.0.0:8080/" in lines[0]
    assert lines[1].startswith("muratune: warning: the server is reachable on every network interface")
    assert ServeOptions(host="::", api_key="k").url == "http://[::]:8000"


def test_the_service_screens_uploads_itself(service):
    from muratune.serve.service import UploadTooLarge

    with pytest.raises(UploadTooLarge, match="big.png: image too large"):
        service.analyse([Upload("big.png", bomb_png(7000, 7000))])
    out = io.BytesIO()
    from PIL import Image

    Image.new("L", (64, 64)).save(out, format="BMP")
    with pytest.raises(UserError, match="v.bmp: not a PNG, JPEG or DICOM file"):
        service.analyse([Upload("v.bmp", out.getvalue())])


# --------------------------------------------------------------------------------------------- stalled uploads
def stalled_upload(url: str, headers: str = "") -> socket.socket:
    """A raw connection that sends a multipart upload's headers and first bytes, then holds it open."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    part = b'--stall\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n\x89PNG\r\n'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000000\r\n{headers}"
        "Content-Type: multipart/form-data; boundary=stall\r\n\r\n"
    )
    sock.sendall(head.encode() + part)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails at ``deadline`` (time.monotonic)."""
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the connection was still open at the deadline; received {received[:80]!r}") from None
        if not chunk:
            return received
        received += chunk


def test_stalled_uploads_neither_starve_health_nor_predict_and_are_cut_off(server, study):
    opened = time.monotonic()
    sockets = [stalled_upload(server) for _ in range(STALLED)]
    try:
        start = time.monotonic()
        assert requests.get(f"{server}/health", timeout=30).json() == {"status": "ok"}
        health_s = time.monotonic() - start
        assert time.monotonic() - opened < STALL_S  # measured while every stalled upload was still held
        assert health_s < 1.0, f"/health took {health_s:.2f} s beside {STALLED} stalled uploads"
        response = requests.post(f"{server}/predict", files=_files(study), data={"body_part": "wrist"}, timeout=120)
        assert response.status_code == 200, response.text
        deadline = opened + STALL_S + 10.0
        for sock in sockets:
            reply = read_until_closed(sock, deadline)
            assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
            assert b"request body stalled" in reply
    finally:
        for sock in sockets:
            sock.close()
    assert requests.get(f"{server}/health", timeout=30).status_code == 200


async def _asgi_request(
    app, path: str, headers: dict[str, str], chunks: list[tuple[float, bytes]], complete: bool = False, silent=None
) -> tuple[int, int, str]:
    """One POST through the ASGI app; its body arrives as (delay, bytes) chunks, then the client falls silent.

    Args:
        complete: the last chunk ends the body instead.
        silent: an ``asyncio.Event`` set when the client falls silent.

    Returns:
        The response status, how many times the app asked for the body, and the response body.
    """
    import asyncio

    asked, sent = 0, []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict:
        nonlocal asked
        asked += 1
        if asked > len(chunks):
            if silent is not None:
                silent.set()
            await asyncio.Event().wait()  # a client that never sends the rest
        delay, data = chunks[asked - 1]
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": data, "more_body": not (complete and asked == len(chunks))}

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 30)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, asked, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


def _asgi_call(app, path: str, headers: dict[str, str], chunks: list[tuple[float, bytes]]) -> tuple[int, int, str]:
    """``_asgi_request`` run to its end (see there)."""
    import asyncio

    return asyncio.run(_asgi_request(app, path, headers, chunks))


def test_the_api_key_is_refused_before_any_body_is_read(service):
    access = ServeAccess(host="0.0.0.0", allowed_hosts=("mura.lan",), api_key="s3cret")
    app = create_app(LocalBackend(service), ServeLimits(body_idle_s=0.5), access)
    host = {"Host": "mura.lan:8000", "Content-Type": "multipart/form-data; boundary=x", "Content-Length": "999"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        status, asked, detail = _asgi_call(app, "/predict", {**host, **headers}, [])
        assert (status, asked) == (401, 0) and "missing or wrong API key" in detail
    status, asked, detail = _asgi_call(app, "/predict", {**host, "X-API-Key": "s3cret"}, [])
    assert (status, asked) == (408, 1) and "nothing received for 0.5 s" in detail  # with the key: read, then cut off


def test_a_body_that_trickles_below_the_rate_floor_is_cut_off(service):
    app = create_app(LocalBackend(service), ServeLimits(body_idle_s=0.3, body_min_rate=64 * 1024))
    headers = {"Host": "127.0.0.1:8000", "Content-Type": "multipart/form-data; boundary=x"}
    start = time.monotonic()
    status, asked, detail = _asgi_call(app, "/predict", headers, [(0.1, b"x" * 10)] * 100)
    assert status == 408 and "too slow: under 64 KB/s" in detail  # never silent for 0.3 s, but 100 bytes a second
    assert asked < 100  # cut off while the client still had most of its body to send
    assert time.monotonic() - start < 5.0


def test_the_bodies_held_at_once_stay_under_their_budget(service):
    import asyncio

    limits = ServeLimits(max_request_bytes=1000, max_buffered_bytes=1500, body_idle_s=1.0)
    app = create_app(LocalBackend(service), limits)
    headers = {"Host": "127.0.0.1:8000", "Content-Type": "multipart/form-data; boundary=x"}

    async def two_uploads() -> tuple[tuple, tuple]:
        silent = asyncio.Event()
        first = asyncio.create_task(_asgi_request(app, "/predict", headers, [(0, b"x" * 900)], silent=silent))
        await silent.wait()  # the first upload holds 900 bytes
        second = await _asgi_request(app, "/predict", headers, [(0, b"y" * 900)], complete=True)
        return await first, second

    first, second = asyncio.run(two_uploads())
    assert second[0] == 503 and "server busy" in second[2]
    assert first[0] == 408
    status, _, detail = asyncio.run(_asgi_request(app, "/predict", headers, [(0, b"y" * 900)], complete=True))
    assert status not in (408, 503), detail  # the budget was given back: the body is read whole, and parsed
    small = create_app(LocalBackend(service), ServeLimits(max_request_bytes=1000, max_buffered_bytes=10))
    status, _, detail = asyncio.run(_asgi_request(small, "/predict", headers, [(0, b"y" * 900)], complete=True))
    assert status not in (408, 503), detail  # a budget below one body still serves one body of the largest size


# --------------------------------------------------------------------------------------------- DICOM bombs
def test_a_deflate_bomb_and_a_corrupt_deflate_stream_are_refused_fast(service, study):
    from tests.test_dicom_deflate import BOMB_BYTES, deflated_dicom

    client = _client(service)
    bomb = deflated_dicom(np.zeros((64, 64), np.uint8), pixel_bytes=BOMB_BYTES)
    corrupt = deflated_dicom(np.zeros((64, 64), np.uint8), corrupt_pixels=True)
    for name, data, reason in (("bomb.dcm", bomb, "Deflated DICOM refused"), ("bad.dcm", corrupt, "invalid block")):
        start = time.monotonic()
        response = client.post("/predict", files=[("files", (name, data, "application/dicom"))])
        assert time.monotonic() - start < 1.0
        assert response.status_code == 422 and response.json()["detail"].startswith(f"{name}: "), response.text
        assert reason in response.json()["detail"]
    valid = deflated_dicom(cv2.imread(str(study[0]), cv2.IMREAD_GRAYSCALE))
    response = client.post("/predict", files=[("files", ("ok.dcm", valid, "application/dicom"))])
    assert response.status_code == 200, response.text
