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

--screenshot writes the page with the first organ's attention overlay that shows switched on (the web guide's
picture), after the figures are printed.

    python benchmarks/bench_web.py --guessing [--requests 40] [--guess-seconds 20]

measures instead, without a browser (aiohttp), a signed-in user's page (her session's index.html through the
launcher, with her cookie) on a launcher with a users file: median latency on an idle server, then while 4 clients
guess her password as fast as they are answered, from her own address (so the limit on failed sign-ins applies to
them and must not to her); the target is a median within 2x of idle."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
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


async def signed_in_page_while_guessing(url: str, password: str, requests: int, seconds: float) -> dict:
    """Latency of alice's session page (ms) idle and while 4 clients guess her password (see the docstring)."""
    import aiohttp

    def basic(pw: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"alice:{pw}".encode()).decode()}

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=timeout) as alice, \
            aiohttp.ClientSession(timeout=timeout) as guessers:
        async with alice.get(url, headers=basic(password), allow_redirects=False) as r:   # her tab: a session
            page = url + r.headers["Location"] + "index.html"

        async def page_ms() -> float:
            t = time.perf_counter()
            async with alice.get(page) as response:
                await response.read()
                assert response.status == 200, response.status
            return (time.perf_counter() - t) * 1000

        for _ in range(5):
            await page_ms()
        idle = []
        for _ in range(requests):
            idle.append(await page_ms())
            await asyncio.sleep(0.05)
        answers: dict[int, int] = {}
        guessing = True

        async def guess(n: int) -> None:
            i = 0
            while guessing:
                async with guessers.get(url, headers=basic(f"guess {n}.{i}"), allow_redirects=False) as response:
                    answers[response.status] = answers.get(response.status, 0) + 1
                i += 1

        t = time.perf_counter()
        tasks = [asyncio.ensure_future(guess(n)) for n in range(4)]
        busy = []
        while len(busy) < requests or time.perf_counter() - t < seconds:   # past the limit on failures too
            busy.append(await page_ms())
            await asyncio.sleep(0.05)
        guessing = False
        await asyncio.gather(*tasks)
        window = time.perf_counter() - t
    return {"bench": "web-sign-in", "requests_idle": len(idle), "requests_while_guessing": len(busy),
            "page_idle_median_ms": round(statistics.median(idle), 1),
            "page_while_guessing_median_ms": round(statistics.median(busy), 1),
            "page_while_guessing_max_ms": round(max(busy), 1),
            "ratio": round(statistics.median(busy) / statistics.median(idle), 2),
            "guesses_refused_401": answers.get(401, 0), "guesses_refused_429": answers.get(429, 0),
            "guessing_s": round(window, 1)}


def guessing(requests: int, seconds: float) -> int:
    from mosmos.web.auth import hash_password
    from mosmos.web.launcher import free_port, listening

    password = "correct horse battery staple"
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        users = Path(tmp) / "users.txt"
        users.write_text(f"alice:{hash_password(password)}\n")
        port = free_port("127.0.0.1")
        server = subprocess.Popen([sys.executable, "-m", "mosmos", "web", "--port", str(port), "--users", str(users),
                                   "--max-sessions", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_until(lambda: server.poll() is None and asyncio.run(listening("127.0.0.1", port)), timeout=120)
            result = asyncio.run(signed_in_page_while_guessing(f"http://127.0.0.1:{port}/", password, requests,
                                                                       seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(result | {"load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(ROOT / "Testing/Data/totalseg_example/example_ct.nii.gz"))
    parser.add_argument("--tags", default="liver, spleen, kidneys")
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps of the tiny model")
    parser.add_argument("--screenshot", help="write a PNG of the page with an attention overlay on")
    parser.add_argument("--model", help="serve this model file instead of fine-tuning the tiny one (for the "
                        "README's picture: `mosmos demo`'s model, on its held-out phantom)")
    parser.add_argument("--guessing", action="store_true",
                        help="the signed-in page while 4 clients guess a password, against idle (no browser)")
    parser.add_argument("--requests", type=int, default=40, help="page requests timed in each phase (--guessing)")
    parser.add_argument("--guess-seconds", type=float, default=20.0, help="the guessing phase's least length")
    args = parser.parse_args()
    if args.guessing:
        return guessing(args.requests, args.guess_seconds)
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
            # Before Playwright's sync API, which runs an event loop of its own that asyncio.run may not nest in.
            wait_until(lambda: server.poll() is None and asyncio.run(listening("127.0.0.1", port)), timeout=120)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=[
                    "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])
                page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
                url = f"http://127.0.0.1:{port}/"
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
                    # The first organ whose overlay shows in the axial slice on view (a model's map of an organ
                    # may lie below the 5 % the overlay shows there, e.g. on a scan unlike its training data).
                    before = image(axial.screenshot())
                    for box in page.query_selector_all("#results input[type=checkbox]"):
                        box.check()
                        try:
                            wait_until(lambda: np.mean(np.abs(image(axial.screenshot()) - before).max(axis=-1) > 40)
                                       > 0.02, timeout=30)
                            break
                        except TimeoutError:
                            continue
                    else:   # the picture still shows the segments, volumes and flags
                        print("no attention overlay showed in the axial view: the model's maps are below the 5 % "
                              "the overlay shows there (the tiny model: train it longer, --steps)", file=sys.stderr)
                    time.sleep(1)
                    page.screenshot(path=args.screenshot)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    return 0


if __name__ == "__main__":
    sys.exit(main())
