"""`mosmos web` in headless Chromium (Debian's, through Playwright) where an attacker or an unlucky operator needs
the page: uploads announced with a name or size the server does not take, a zip bomb, a model path set in the
page's state, a session killed during a run, the launcher killed (as the OOM killer would) during a run, and the
next launcher stopped with SIGTERM during a run. After each, no file of the uploaded CT is left under the server's
temporary folder (and, once the launchers are gone, no file at all). Real launcher, real session
processes, the stand-in model (Testing/inference_stub.py), loopback only.

Skips, with the reason, where chromium, Playwright or trame-slicer are missing; MOSMOS_REQUIRE_BROWSER=1 (set by
.ci/run) turns that skip into a failure."""

from __future__ import annotations

import os
import shutil
import signal
import time
import zipfile

import pytest

from helpers import real_data
from web_server import descendants, files_left, gone, mosmos_web, session_processes, stub_models, wait_listening

CT = real_data("totalseg_example/example_ct_sm.nii.gz")
TOKEN = "test-token-38"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    import importlib.util

    missing = [reason for ok, reason in (
        (CHROMIUM is not None, "no chromium on PATH (apt-get install chromium)"),
        (importlib.util.find_spec("playwright"), "Playwright for Python is not installed (pip install playwright)"),
        (importlib.util.find_spec("trame_slicer"), "the web extra is not installed (trame-slicer)")) if not ok]
    if missing:
        if os.environ.get("MOSMOS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MOSMOS_REQUIRE_BROWSER=1 but {missing[0]}")
        pytest.skip(missing[0])
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
        yield chromium
        chromium.close()


def _open_tab(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{server['url']}?token={TOKEN}", timeout=240000)
    page.wait_for_selector("#segment", timeout=240000)
    return page


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return value


def _message(page, fragment: str) -> str:
    _wait(lambda: page.query_selector("#message") and fragment in page.inner_text("#message"),
          f"no message with {fragment!r}")
    text = page.inner_text("#message")
    assert "[object Object]" not in text
    return text


def _volume_files(server) -> list[str]:
    """The files under the server's TMPDIR but Slicer's own cache in a running session's work folder."""
    return [f for f in files_left(server) if not f.endswith("/.slicer-cache")]


def _ct_files(server) -> list[str]:
    """Files of the uploaded CT anywhere under the server's TMPDIR: the upload, a run's copy (input.nii)."""
    return [f for f in files_left(server) if os.path.basename(f).startswith("example_ct") or f.endswith("input.nii")]


def _segment_runs(server) -> list:
    return [p for p in descendants(server) if " segment " in " ".join(p.cmdline())]


def _start_run(page, server):
    """Segment the uploaded CT with the stand-in model; returns once its child runs and has its copy of the CT."""
    page.select_option("#model", "stub.mosmos")
    page.fill("#organs", "liver")
    page.click("#segment")
    copies = _wait(lambda: list((server["tmp"] / "tmpdir").rglob("mosmos-segment-*/input.nii")),
                   "the run's copy of the CT was not made")
    runs = _wait(lambda: _segment_runs(server), "no segmentation process")
    return copies, runs


def _upload_ct(page):
    page.set_input_files("#upload", str(CT))
    _wait(lambda: page.inner_text("#volume-name") == "example_ct_sm", "the CT did not open", timeout=120)


def test_uploads_models_and_killed_processes_leave_no_patient_data(browser, tmp_path):
    models, env = stub_models(tmp_path)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("series/0001.dcm", bytes(30_000_000))   # 30 MB of zeros in 30 kB
    with mosmos_web(tmp_path, env | {"MOSMOS_WEB_TOKEN": TOKEN}, "--models", str(models), "--token",
                    "--max-sessions", "2", "--max-upload-mb", "1") as server:
        wait_listening(server)
        page = _open_tab(browser, server)

        # Announced names and sizes the server does not take: a sentence each, and the tab keeps working.
        for name, size, expected in (("..", 10, "'..': not a plain file name"),
                                     ("a\0b.nii", 10, "not a plain file name"),
                                     ("../ct.nii", 10, "'../ct.nii': not a plain file name"),
                                     ("ct.nii", -1, "a size of '-1' bytes, not a whole number of bytes"),
                                     ("ct.nii", "12", "a size of '12' bytes"),
                                     ("ct.nii", 1.5, "a size of '1.5' bytes")):
            page.evaluate("([name, size]) => window.mosmosUpload({name, size, slice: () => new Blob(['x'])})",
                          [name, size])
            _message(page, expected)
        # A zipped "DICOM series" of 30 kB that unpacks to 30 MB: refused at 10 x the 1 MB limit, nothing kept.
        page.set_input_files("#upload", str(bomb))
        _message(page, "bomb.zip: unpacks to more than 10 MB (10 x the upload limit); refused")
        assert _volume_files(server) == []
        _upload_ct(page)      # the tab's next upload works
        assert not page.is_visible("#message")

        # A model named by a path in the page's state: the same sentence whether or not a file is there, and no
        # run starts.
        said = []
        for path in ("/etc/passwd", "/no/such/model.mosmos", "../models/stub.mosmos"):
            page.evaluate(f"trame.state.set('model', {path!r})")
            page.fill("#organs", "liver")
            page.click("#segment")
            said.append(_message(page, f"model {path!r}: not one of the models this server offers").replace(path, "X"))
            page.evaluate("trame.state.set('message', '')")
        assert len(set(said)) == 1 and not _segment_runs(server)

        # The session killed (SIGKILL) during a run: the launcher's sweep removes its folder, the CT's copies
        # with it, and the run dies with its session.
        copies, runs = _start_run(page, server)
        session, = [p for p in session_processes(server) if page.url.split("/session/")[1].split("/")[0]
                    in " ".join(p.cmdline())]
        session.kill()
        assert gone(runs, timeout=10)
        _wait(lambda: not any(c.exists() for c in copies) and not _volume_files(server),
              "the session's files stayed", timeout=30)
        page.reload()
        assert "this session has ended" in page.inner_text("#message")

        # The launcher SIGKILLed during a run in another tab (the spare session, started meanwhile): its sessions
        # and their runs die with it and take their folders with them.
        other = _open_tab(browser, server)
        _upload_ct(other)
        copies, runs = _start_run(other, server)
        processes = session_processes(server) + runs
        assert _ct_files(server)
        os.kill(server["proc"].pid, signal.SIGKILL)
        server["proc"].wait()
        assert gone(processes, timeout=15)
        assert not any(c.exists() for c in copies) and _ct_files(server) == [], files_left(server)
        # The dead launcher's root stays (with what a session killed while it was still starting left: Slicer's
        # cache), its lock released by the kernel.
        stale = list((tmp_path / "tmpdir").glob("mosmos-web-*/launcher-*"))
        assert len(stale) == 1

    # The next launcher on this machine removes it at start. SIGTERM during a run ends it within 5 s, with its
    # sessions, their runs and every file they had.
    with mosmos_web(tmp_path, env, "--models", str(models)) as server:
        wait_listening(server)
        assert not stale[0].exists()
        page = _open_tab(browser, server)
        _upload_ct(page)
        copies, runs = _start_run(page, server)
        processes = session_processes(server) + runs
        t = time.monotonic()
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(timeout=30)
        assert time.monotonic() - t < 5
        assert gone(processes, timeout=1)
        assert list((tmp_path / "tmpdir").glob("mosmos-web-*/launcher-*")) == [] and files_left(server) == []
