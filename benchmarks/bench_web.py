"""`mosmos web` latency in a real browser (Debian chromium, headless, Playwright), with a tiny MOSMOS-UNETR
fine-tuned here on phantoms (mosmos.experiments.recipes) and a real CT from Testing/Data:

1. page load: the launcher's address -> the page's controls, for the first tab (its session starts then) and
   for a later one (the spare session the launcher keeps started);
2. open to first slice: choosing the CT from the data folder -> its axial slice rendered in the page;
3. segment to overlay: clicking Segment -> the organs' colours in the axial view, against the baseline
   `mosmos segment` on the command line for the same input and model (ratio: the web path's overhead);
4. the page while the results load into the scene: a ping through the page (a trame trigger the server
   answers at once) every 20 ms from the click on Segment; the slowest round trip while the page said it was
   loading the results, against the baseline of the same ping on an idle page (median of 20).

    python benchmarks/bench_web.py [--input Testing/Data/totalseg_example/example_ct.nii.gz]
                                   [--tags "liver, spleen, kidneys"] [--screenshot PATH] [--model FILE]

--screenshot writes the page with the first organ's attention overlay switched on (the README's picture), after the
figures are printed."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AXIAL = 3   # Quad View in page order: coronal, sagittal, 3D, axial


def image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def coloured(rgb: np.ndarray) -> int:
    """Pixels far from grey: segment colours over a CT slice."""
    return int(np.count_nonzero(rgb.max(axis=-1) - rgb.min(axis=-1) > 40))


def wait_until(predicate, timeout: float = 300.0, poll: float = 0.1, what: str = "timed out"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(ROOT / "Testing/Data/totalseg_example/example_ct.nii.gz"))
    parser.add_argument("--tags", default="liver, spleen, kidneys")
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps of the tiny model")
    parser.add_argument("--screenshot", help="write a PNG of the page with an attention overlay on")
    parser.add_argument("--model", help="serve this model file instead of fine-tuning the tiny one (for the "
                        "README's picture: `mosmos demo`'s model, on its held-out phantom)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print(json.dumps({"bench": "web", "skipped": "no chromium on PATH (apt-get install chromium)"}))
        return 0
    from playwright.sync_api import sync_playwright

    from mosmos.experiments.recipes import make_tiny_segmentation_model
    from mosmos.web.app import LOADING, TIMED_PINGS_SCRIPT
    from mosmos.web.launcher import free_port, listening

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        tmp = Path(tmp)
        models, data = tmp / "models", tmp / "data"
        models.mkdir()
        data.mkdir()
        if args.model:
            model = models / Path(args.model).name
            shutil.copyfile(args.model, model)
        else:
            model = make_tiny_segmentation_model(models / "tiny.mosmos", steps=args.steps)
        volume = data / Path(args.input).name
        shutil.copyfile(args.input, volume)

        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mosmos", "segment", str(volume), "--model", str(model), "--tags",
                        args.tags, "--output", str(tmp / "cli.nii.gz"), "--attention", str(tmp / "att")],
                       check=True, capture_output=True)
        cli = time.perf_counter() - t

        port = free_port("127.0.0.1")
        server = subprocess.Popen([sys.executable, "-m", "mosmos", "web", "--port", str(port), "--models",
                                   str(models), "--data", str(data)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=[
                    "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
                page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
                url = f"http://127.0.0.1:{port}/"
                wait_until(lambda: server.poll() is None and listening("127.0.0.1", port), timeout=120)
                t = time.perf_counter()
                page.goto(url, timeout=180000)
                page.wait_for_selector("#segment", timeout=180000)
                pageLoadCold = time.perf_counter() - t   # the first tab waits for its session to start

                time.sleep(20)  # the launcher starts the next tab's spare session meanwhile
                t = time.perf_counter()
                second = browser.new_page(viewport={"width": 1400, "height": 900})
                second.goto(url, timeout=180000)
                second.wait_for_selector("#segment", timeout=180000)
                pageLoad = time.perf_counter() - t
                second.close()

                axial = page.locator(".remote-controlled-area").nth(AXIAL)
                t = time.perf_counter()
                page.select_option("#data", volume.name)
                wait_until(lambda: image(axial.screenshot()).std() > 20)
                firstSlice = time.perf_counter() - t

                idle = sorted(page.evaluate("""async () => { const ms = [];
                    for (let i = 0; i < 20; i++) { const t = performance.now(); await trame.trigger('mosmos_ping');
                    ms.push(performance.now() - t); } return ms; }"""))
                page.fill("#organs", args.tags)
                t = time.perf_counter()
                pings = page.evaluate(TIMED_PINGS_SCRIPT)       # clicks Segment; returns when the results show
                loading = [p["ms"] for p in pings if p["info"].startswith(LOADING)]
                page.wait_for_selector("#results", timeout=600000)
                wait_until(lambda: coloured(image(axial.screenshot())) > 200)
                segmentToOverlay = time.perf_counter() - t
                # Printed before the screenshot, which needs an attention map that the overlay shows.
                print(json.dumps({"bench": "web", "input": Path(args.input).name,
                                  "page_load_first_tab_s": round(pageLoadCold, 2), "page_load_s": round(pageLoad, 2),
                                  "open_to_first_slice_s": round(firstSlice, 2),
                                  "segment_to_overlay_s": round(segmentToOverlay, 2),
                                  "baseline": "mosmos segment on the command line, same input and model",
                                  "baseline_s": round(cli, 2), "ratio": round(segmentToOverlay / cli, 2),
                                  "pings_while_loading": len(loading),
                                  "ping_while_loading_max_s": round(max(loading, default=float("nan")) / 1000, 3),
                                  "ping_baseline": "the same ping on an idle page, median of 20",
                                  "ping_idle_s": round(idle[len(idle) // 2] / 1000, 4),
                                  "ping_ratio": round(max(loading, default=float("nan")) / idle[len(idle) // 2], 1)}),
                      flush=True)

                if args.screenshot:
                    first = page.query_selector("#results input[type=checkbox]")
                    before = image(axial.screenshot())
                    first.check()
                    wait_until(lambda: np.mean(np.abs(image(axial.screenshot()) - before).max(axis=-1) > 40) > 0.02,
                               timeout=60, what="the attention overlay did not show in the axial view: the tiny "
                               "model's map is below the 5 % the overlay shows (train it longer: --steps)")
                    time.sleep(1)
                    page.screenshot(path=args.screenshot)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    return 0


if __name__ == "__main__":
    sys.exit(main())
