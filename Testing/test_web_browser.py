"""`mosmos web` in a real browser: Debian's chromium, headless, driven by Playwright, against the command started
on a free loopback port with a stand-in model made here (Testing/inference_stub.py, registered in the server's
processes through sitecustomize). One launcher serves every check: every tab through its one port, with the
token asked for (--token), at most two sessions and a 1 MB upload limit. Checks come from screenshots of
Slicer's views and from the page's own text.

Skips, with the reason, where chromium, Playwright or trame-slicer are missing (`make test` installs them where
it can); MOSMOS_REQUIRE_BROWSER=1 (set by .ci/run) turns that skip into a failure."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import real_data
from web_server import mosmos_web, session_folders, session_processes, stub_models

CT = real_data("totalseg_example/example_ct_sm.nii.gz")
DICOM = real_data("totalseg_example/example_ct_dicom")
CT3 = real_data("dcmqi_ct3slice/ct-3slice")     # a real series with its UIDs, so a DICOM SEG can reference it
TOKEN = "test-token-29"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Quad View, in page order: coronal, sagittal (left column), 3D, axial (right column).
AXIAL, THREE_D = 3, 2
LIVER = 1


def _require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("MOSMOS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MOSMOS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _tinted(rgb: np.ndarray, color) -> int:
    """Pixels leaning to ``color``'s strongest channel, well above the grey of a CT slice."""
    c = int(np.argmax(color))
    others = [i for i in range(3) if i != c]
    return int(np.count_nonzero(rgb[..., c] - rgb[..., others].max(axis=-1) > 30))


def _wait_view(view, predicate, timeout=30.0) -> np.ndarray:
    """Poll the view's screenshot until ``predicate`` holds (server-side rendering arrives asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        shot = _image(view.screenshot())
        if predicate(shot):
            return shot
        assert time.monotonic() < deadline, "the view did not show the expected change"
        time.sleep(0.3)


def _wait_text(page, selector, predicate, timeout=60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        el = page.query_selector(selector)
        text = el.inner_text() if el else ""
        if predicate(text):
            return text
        assert time.monotonic() < deadline, f"{selector}: {text!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require(CHROMIUM is not None, "no chromium on PATH (apt-get install chromium)")
    _require(_importable("playwright"), "Playwright for Python is not installed (pip install playwright)")
    _require(_importable("trame_slicer") and _importable("slicer"), "the web extra is not installed (trame-slicer)")
    tmp = tmp_path_factory.mktemp("web")
    models, env = stub_models(tmp)
    stub = str(models / "stub.mosmos")
    data = tmp / "data"
    data.mkdir()
    broken = bytearray(Path(stub).read_bytes())
    broken[8 + int.from_bytes(broken[:8], "little")] ^= 0xFF   # a tensor byte changes; header and checksum stay
    (models / "broken.mosmos").write_bytes(bytes(broken))
    for series in (DICOM, CT3):
        with zipfile.ZipFile(data / f"{series.name}.zip", "w") as archive:    # a zipped DICOM series
            for f in sorted(series.iterdir()):
                archive.write(f, f"{series.name}/{f.name}")
    with mosmos_web(tmp, env | {"MOSMOS_WEB_TOKEN": TOKEN},
                    "--models", str(models), "--data", str(data), "--token", "--max-sessions", "2",
                    "--max-upload-mb", "1") as server:
        yield server | {"stub": stub}


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
        yield chromium
        chromium.close()


def _open_tab(browser, server, ready=True):
    page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    deadline = time.monotonic() + 90
    while True:   # the launcher listens a moment after the command starts
        try:
            page.goto(f"{server['url']}?token={TOKEN}", timeout=90000)
            break
        except Exception:
            assert server["proc"].poll() is None, server["log"].read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
    if ready:
        page.wait_for_selector("#segment", timeout=90000)
    return page


def _uploads(server, page) -> list[str]:
    """The files in the upload folder of ``page``'s session (the launcher's, under the server's TMPDIR)."""
    sid = page.url.split("/session/")[1].split("/")[0]
    folders = [f for f in session_folders(server) if f.name == sid]
    assert len(folders) == 1, folders
    return sorted(p.name for p in (folders[0] / "uploads").iterdir())


def _websocket_status(port: int, path: str, cookie: str | None) -> int:
    """The status of a websocket handshake (101: switching protocols, the socket opens)."""
    import base64
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    conn.request("GET", path, headers=headers | ({"Cookie": cookie} if cookie else {}))
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def _session_processes(server) -> int:
    return len(session_processes(server))


def _message(page, fragment: str) -> None:
    _wait_text(page, "#message", lambda t: fragment in t, timeout=60)


def test_segment_review_and_download_in_the_browser(server, browser, tmp_path, scene):
    import slicer

    from mosmos.cli import main as mosmos_main
    from mosmos.mrml import segmentation, volumes

    # The command line's result for the same input and model, while the launcher starts its first session.
    out = tmp_path / "cli"
    assert mosmos_main(["segment", str(CT), "--model", server["stub"], "--tags", "liver, spleen", "--output",
                        str(out / "labels.nii.gz"), "--volumes", str(out / "volumes.json"), "--device", "cpu"]) == 0
    cliOrgans = json.loads((out / "volumes.json").read_text())["organs"]
    cli = {o["name"]: o["volume_ml"] for o in cliOrgans}

    page = _open_tab(browser, server)
    assert page.url.startswith(f"{server['url']}session/")    # the one port: the launcher forwards the session
    views = page.locator(".remote-controlled-area")
    axial = views.nth(AXIAL)

    # Without the token: 401 for the launcher's page, the session's page and its websocket; no session starts.
    import urllib.error
    import urllib.parse
    import urllib.request

    sessions = _session_processes(server)
    for url in (server["url"], page.url, f"{server['url']}?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
    # Not ASCII (it was a 500): a Bearer value, a cookie, the token in the address; 401 like any other refusal.
    for headers, query in (({"Authorization": "Bearer tökén"}, ""), ({"Cookie": "mosmos_signin=ü.1.ß"}, ""),
                           ({}, "?token=%C3%BC")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(server["url"] + query, headers=headers), timeout=10)
        assert refused.value.code == 401

    wsPath = urllib.parse.urlsplit(page.url).path.replace("index.html", "") + "ws"
    signedIn = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    assert _websocket_status(server["port"], wsPath, None) == 401
    assert _websocket_status(server["port"], wsPath, signedIn) == 101       # the page's own cookie opens it
    assert _session_processes(server) == sessions

    # An upload above the limit (1 MB here): the message, and nothing kept in the session's upload folder.
    big = tmp_path / "big.nii.gz"
    big.write_bytes(os.urandom(1_500_000))
    page.set_input_files("#upload", str(big))
    _message(page, "big.nii.gz: 1.5 MB, more than this server accepts (1 MB)")
    assert _uploads(server, page) == []

    # Bad inputs: each one a message, and the page keeps working.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#upload", str(notes))
    _message(page, "notes.txt: not a volume")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 1), np.int16), np.eye(4)), flat)
    page.set_input_files("#upload", str(flat))
    _message(page, "flat.nii.gz: a 2D image")
    assert _uploads(server, page) == []     # what could not be opened is not kept either

    page.set_input_files("#upload", str(CT))
    _wait_text(page, "#volume-name", lambda t: t == "example_ct_sm")
    assert _uploads(server, page) == ["example_ct_sm.nii.gz"]
    assert page.evaluate("trame.state.get('upload_progress')") == 100
    before = _wait_view(axial, lambda im: im.std() > 20)            # the CT slice has arrived

    page.fill("#organs", "liver, xyzzy")
    page.click("#segment")
    _message(page, "unknown organ name 'xyzzy'")

    page.select_option("#model", "broken.mosmos")
    page.fill("#organs", "liver, spleen")
    page.click("#segment")
    _message(page, "broken.mosmos: checksum mismatch")
    assert not page.is_disabled("#segment")

    # Cancel while the child runs: it goes away and the page segments again. Quick preview runs the
    # child with --fast, as the Slicer module does.
    import psutil

    def segment_children():
        return [" ".join(c.cmdline()) for c in psutil.Process(server["proc"].pid).children(recursive=True)
                if "segment" in " ".join(c.cmdline())]

    page.select_option("#model", "stub.mosmos")
    page.check("#quick-preview")
    page.click("#segment")
    page.wait_for_selector("#cancel:not([disabled])", timeout=20000)
    assert "(quick preview)" in page.inner_text("#info")
    assert [c for c in segment_children() if "--fast" in c.split()]
    page.click("#cancel")
    _wait_text(page, "#info", lambda t: t == "Cancelled.")
    assert not segment_children()
    page.uncheck("#quick-preview")

    page.click("#segment")
    page.wait_for_selector("#results", timeout=120000)
    liverColor = [int(page.evaluate("getComputedStyle(document.querySelector('[data-organ=\"liver\"] td div'))"
                                    ".backgroundColor").strip("rgb()").split(",")[i]) for i in range(3)]
    assert _tinted(before, liverColor) < 50
    segmented = _wait_view(axial, lambda im: _tinted(im, liverColor) > 2000)
    _wait_view(views.nth(THREE_D), lambda im: _tinted(im, liverColor) > 2000)   # the 3D surface

    page.check("#overlay-liver")
    _wait_view(axial, lambda im: np.mean(np.abs(im - segmented).max(axis=-1) > 40) > 0.05)

    # The page's volume and the command line's agree, for the same input and model.
    shown = page.inner_text("[data-organ=\"liver\"] td.ml")
    assert float(shown) == pytest.approx(cli["liver"], abs=1e-3)
    # So do the QC flags: each status in its colour, its reasons as the cell's tooltip.
    from mosmos.mrml.tables import STATUS_COLORS

    for organ in cliOrgans:
        cell = page.locator(f"[data-organ=\"{organ['name']}\"] td.status")
        assert cell.inner_text() == organ["status"] and cell.get_attribute("title") == "; ".join(organ["reasons"])
        background = cell.locator("span").evaluate("e => getComputedStyle(e).backgroundColor")
        assert background == "rgb({}, {}, {})".format(*bytes.fromhex(STATUS_COLORS[organ["status"]][1:]))
    assert {o["status"] for o in cliOrgans} != {"ok"}          # the stub's organs are implausible: a flag shows
    page.locator("#results").screenshot(path=str(tmp_path / "flags.png"))

    with page.expect_download() as download:
        page.click("#download-seg")
    segPath = tmp_path / "web.seg.nrrd"
    download.value.save_as(segPath)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    reference = volumes.read_volume(CT, scene, "ct")
    segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(segPath))
    assert storage.ReadData(segNode)
    labels = np.asarray(nib.load(out / "labels.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(segmentation.export_segment_array(segNode, "liver", reference),
                                  (labels == LIVER).astype(np.uint8))

    with page.expect_download() as download:
        page.click("#download-attention")
    download.value.save_as(tmp_path / "attention.zip")
    assert sorted(zipfile.ZipFile(tmp_path / "attention.zip").namelist()) == [
        "liver_attention.nii.gz", "spleen_attention.nii.gz"]

    assert not page.query_selector("#download-dicom-seg")     # a NIfTI input: no DICOM SEG to offer

    # A second tab is a session of its own: it starts empty, opens a zipped DICOM series from the data folder,
    # and the first keeps its volume and results.
    other = _open_tab(browser, server)
    assert other.url != page.url and other.inner_text("#volume-name") == ""
    other.select_option("#data", "ct-3slice.zip")
    _wait_text(other, "#volume-name", lambda t: t == "ct-3slice")
    assert "512x512x3" in other.inner_text("#info")
    assert page.inner_text("#volume-name") == "example_ct_sm" and page.query_selector("#results")

    # Both tabs segment at once through the one port; the first pings the server through the page while it
    # runs, and the page answers while the results load into the scene.
    other.select_option("#model", "stub.mosmos")
    other.fill("#organs", "liver")
    other.click("#segment")
    from mosmos.web.app import LOADING, TIMED_PINGS_SCRIPT

    pings = page.evaluate(TIMED_PINGS_SCRIPT)      # clicks Segment, pings until the results are shown
    whileLoading = [p["ms"] for p in pings if p["info"].startswith(LOADING)]
    print(f"pings while results load: {len(whileLoading)}, slowest {max(whileLoading, default=0):.0f} ms")
    assert whileLoading, pings[-5:]
    assert page.inner_text("#info").startswith("Done.")
    other.wait_for_selector("#download-dicom-seg", timeout=120000)
    assert other.inner_text("[data-organ=\"liver\"] td.ml")

    # The DICOM input downloads a DICOM SEG that references its series (the writer of `mosmos segment`).
    import highdicom as hd

    with other.expect_download() as download:
        other.click("#download-dicom-seg")
    segDcm = tmp_path / "web_seg.dcm"
    download.value.save_as(segDcm)
    seg = hd.seg.segread(segDcm)
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    from mosmos.inference.io import read_volume

    source = read_volume(CT3).source.headers
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(segDcm)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [] and "Segmentation" in out.stdout + out.stderr, errors

    # A third tab beyond --max-sessions 2: a clear message, not a hang.
    third = _open_tab(browser, server, ready=False)
    assert "2 sessions are open, the most this server runs at once" in third.inner_text("#message")
    assert server["proc"].poll() is None


def test_a_tab_left_idle_loses_its_session_and_its_upload(browser, tmp_path):
    """--idle-timeout against a live session: a tab that opened a volume and then did nothing is ended by the
    launcher (its process stopped, its upload folder removed), and its page then says so."""
    with mosmos_web(tmp_path, {}, "--idle-timeout", "0.05", "--max-sessions", "1") as idle:   # 3 s
        page = _open_tab(browser, idle)
        page.set_input_files("#upload", str(CT))
        _wait_text(page, "#volume-name", lambda t: t == "example_ct_sm")
        assert _uploads(idle, page) == ["example_ct_sm.nii.gz"]
        assert _session_processes(idle) == 1
        folders = session_folders(idle)
        deadline = time.monotonic() + 120
        while _session_processes(idle) or any(f.exists() for f in folders):
            assert time.monotonic() < deadline, "the idle session was not ended"
            time.sleep(1)
        page.reload()
        assert "this session has ended" in page.inner_text("#message")
        assert idle["proc"].poll() is None
