"""The demo page, driven as a user would through WebDriver (selenium) in headless Chromium.

Serves web/dist (built by `scripts/web.sh build`) on a free localhost port, waits for the page to
find its WebGPU adapter, loads the bundled example and its mask, presses Fill, and then checks,
from the canvases' own pixels, that every pixel outside the hole is the input's and that the hole
changed; the flow image must be coloured inside the hole; during a long fill the page must answer and
its progress bar move. `--screenshot PATH` saves the page.
Then the same in a Chromium started without WebGPU: the page must say so and fill on the CPU.

    python web/test_page.py [--screenshot docs/web_demo.png]

Chromium and ChromeDriver come from $CHROMIUM (default /usr/lib/chromium/chromium, Debian's) and
$CHROMEDRIVER (default /usr/bin/chromedriver); without a GPU Chromium uses SwiftShader.
"""

import argparse
import base64
import functools
import http.server
import os
import pathlib
import sys
import threading
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DIST = pathlib.Path(__file__).resolve().parent / "dist"

# A canvas's RGBA bytes, base64 (WebDriver returns JSON; a list of 256 K numbers would be slow).
READ_CANVAS = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = '';
for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
return [c.width, c.height, btoa(s)];
"""


def serve(directory):
    """An HTTP server for `directory` on a free localhost port, in a daemon thread."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args):
        pass


def browser(webgpu):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
    # Without these two flags Chromium on Linux offers navigator.gpu but no adapter.
    flags = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] if webgpu else []
    for arg in flags + [
        "--headless=new",
        "--no-sandbox",
        "--window-size=1300,760",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]:
        options.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def canvas(driver, name):
    w, h, data = driver.execute_script(READ_CANVAS, name)
    return w, h, base64.b64decode(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshot", help="save a screenshot of the page after the WebGPU fill here")
    ap.add_argument("--timeout", type=float, default=600, help="seconds the fill may take")
    ap.add_argument("--size", type=int, default=128, help="the largest side the page draws the example at")
    args = ap.parse_args()
    if not (DIST / "pkg").is_dir():
        sys.exit(f"error: {DIST} has no pkg/: build the page first (bash scripts/web.sh build)")
    server = serve(DIST)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html?size={args.size}"
        print("== with WebGPU")
        fill_example(url, webgpu=True, timeout=args.timeout, screenshot=args.screenshot)
        print("== without WebGPU")
        fill_example(url, webgpu=False, timeout=args.timeout, screenshot=None)
    finally:
        server.shutdown()
    print("page test passed")


def fill_example(url, webgpu, timeout, screenshot):
    """Opens the page, fills the example and checks the canvases; with `webgpu` false, checks that
    the page says it has no WebGPU and fills on the CPU."""
    driver = browser(webgpu)
    try:
        driver.get(url)
        state = lambda d: d.execute_script("return document.body.dataset.state")
        WebDriverWait(driver, 120).until(lambda d: state(d) in ("ready", "error"))
        adapter = driver.find_element(By.ID, "adapter").text
        print(f"page: {adapter}")
        assert state(driver) == "ready", f"the page did not start: {driver.find_element(By.ID, 'message').text}"
        if webgpu:
            assert adapter.startswith("WebGPU adapter:"), f"the page found no WebGPU adapter: {adapter}"
        else:
            assert adapter.startswith("No WebGPU") and "--enable-unsafe-webgpu" in adapter, adapter
            message = driver.find_element(By.ID, "message").text
            assert "on the CPU" in message, f"the page does not say where fills will run: {message}"

        driver.find_element(By.ID, "example").click()
        fill = driver.find_element(By.ID, "fill")
        WebDriverWait(driver, 60).until(lambda d: fill.is_enabled())
        w, h, before = canvas(driver, "image")
        _, _, overlay = canvas(driver, "mask")
        hole = [overlay[4 * p + 3] > 0 for p in range(w * h)]
        n_hole = sum(hole)
        assert 0 < n_hole < w * h, f"the example's mask marks {n_hole} of {w * h} pixels"

        started = time.monotonic()
        fill.click()
        # While it fills, the page answers and its progress bar moves (the work is in a worker).
        progress_seen = set()

        def finished(d):
            now_state, value, total = d.execute_script(
                "const p = document.getElementById('progress'); return [document.body.dataset.state, p.value, p.max];"
            )
            if now_state == "filling" and 0 < value < total:
                progress_seen.add((value, total))
            return now_state in ("done", "error")

        WebDriverWait(driver, timeout, poll_frequency=0.5).until(finished)
        seconds = time.monotonic() - started
        message = driver.find_element(By.ID, "message").text
        print(f"page: {message} (WebDriver saw {seconds:.1f} s)")
        assert state(driver) == "done", f"the fill failed: {message}"
        print(f"progress seen while filling: {sorted(progress_seen)}")
        if seconds > 10:
            assert len(progress_seen) >= 2, f"a {seconds:.0f} s fill showed progress {sorted(progress_seen)} only"

        _, _, after = canvas(driver, "result")
        _, _, flow = canvas(driver, "flow")
        pixel = lambda data, p: data[4 * p : 4 * p + 3]
        outside_changed = [p for p in range(w * h) if not hole[p] and pixel(after, p) != pixel(before, p)]
        inside_changed = sum(1 for p in range(w * h) if hole[p] and pixel(after, p) != pixel(before, p))
        flow_coloured = sum(1 for p in range(w * h) if hole[p] and pixel(flow, p) != b"\xff\xff\xff")
        print(
            f"{w}×{h} image, {n_hole} hole pixels: {inside_changed} changed inside the hole, "
            f"{len(outside_changed)} outside; flow coloured at {flow_coloured} hole pixels"
        )
        assert not outside_changed, f"{len(outside_changed)} pixels outside the hole changed, first at {outside_changed[:5]}"
        assert inside_changed > n_hole // 2, f"only {inside_changed} of {n_hole} hole pixels changed"
        assert flow_coloured > n_hole // 2, f"the flow image is white at most hole pixels ({flow_coloured} coloured)"
        if screenshot:
            driver.save_screenshot(screenshot)
            print(f"wrote {screenshot}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
