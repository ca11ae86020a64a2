"""The viewer notebook served by Voila and driven in Debian's Chromium with Playwright.

Checks that the page shows the viewer, that a key press on the slice slider, a click on
another plane, a new overlay, another case in the picker and the segment button each change
the picture, and that no Python error reaches the page. Screenshots and timings go to ``tests/artifacts/`` (ignored by git).
Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``); never ``playwright install``.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "app/viewer.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "tests" / "artifacts"
PYTHON_ERROR = re.compile(r"Traceback|\b[A-Z]\w*Error\b|There was an error")
SEGMENTED = """() => / in \\d+\\.\\d s$/.test(
                     document.querySelector('.lungseg-browser-state').innerText.trim())"""
NEW_PICTURE = """old => { const i = document.querySelector('img.lungseg-image');
                         return i && i.src && i.src !== old && i.complete && i.naturalWidth > 0; }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def voila_url(tmp_path):
    """Serve the viewer notebook with Voila; yield its URL; stop Voila and its kernels."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    log_path = tmp_path / "voila.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
             "--Voila.ip=127.0.0.1", "--show_tracebacks=True", NOTEBOOK],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:   # HEAD / answers (405) once the server is up, without running the notebook
            if proc.poll() is not None:
                pytest.fail(f"Voila exited early:\n{log_path.read_text()}")
            try:
                urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"Voila did not answer on {url}:\n{log_path.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)   # Voila's own process group: it and its kernels
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.browser
@pytest.mark.timeout(420)
def test_viewer_notebook_in_voila(voila_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    timings, js_errors = {}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("pageerror", lambda exc: js_errors.append(str(exc)))
            t0 = time.monotonic()
            page.goto(voila_url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_function(NEW_PICTURE, arg="", timeout=120_000)
            timings["page_to_first_picture_s"] = time.monotonic() - t0
            img = page.locator("img.lungseg-image")
            readout = page.locator(".lungseg-readout")
            assert re.search(r"axial slice \d+ / \d+ .* z = -?\d+\.\d mm .* cm²", readout.inner_text())
            page.screenshot(path=ARTIFACTS / "viewer_1_loaded.png", full_page=True)

            def change_and_wait(name, action, timeout_s=30):
                """Do ``action``; wait until the picture is a new one; return its screenshot."""
                old_src, old_shot = img.get_attribute("src"), img.screenshot()
                t = time.monotonic()
                action()
                page.wait_for_function(NEW_PICTURE, arg=old_src, timeout=timeout_s * 1000)
                timings[f"{name}_s"] = time.monotonic() - t
                page.wait_for_timeout(100)
                page.screenshot(path=ARTIFACTS / f"viewer_{name}.png", full_page=True)
                assert img.screenshot() != old_shot, f"{name}: the picture did not change"

            slider = page.locator(".lungseg-slice .noUi-handle")
            before = int(slider.get_attribute("aria-valuenow").split(".")[0])
            slider.focus()
            change_and_wait("2_slider_key", lambda: page.keyboard.press("ArrowRight"))
            assert f"axial slice {before + 1} /" in readout.inner_text()

            change_and_wait("3_coronal", lambda: page.click(".lungseg-axis button:has-text('coronal')"))
            assert "coronal slice" in readout.inner_text() and "y = " in readout.inner_text()

            options = page.locator(".lungseg-overlay select option").all_inner_texts()
            overlay = "errors" if "errors" in options else "none"
            change_and_wait("4_overlay_" + overlay,
                            lambda: page.select_option(".lungseg-overlay select", overlay))

            # the case picker: another case at once, then a prediction only when asked for
            state = page.locator(".lungseg-browser-state")
            cases = [c.replace("\xa0", " ")       # the browser shows spaces as no-break ones
                     for c in page.locator(".lungseg-browser-case select option").all_inner_texts()]
            assert len(cases) >= 2, cases
            change_and_wait("5_picker", lambda: page.select_option(".lungseg-browser-case select",
                                                                    index=1))
            said = lambda: state.inner_text().replace("\xa0", " ")  # noqa: E731
            assert cases[1] in said() and "press segment" in said()
            change_and_wait("6_segment", lambda: page.click(".lungseg-browser-segment"),
                            timeout_s=200)
            page.wait_for_function(SEGMENTED, timeout=30_000)
            assert "prediction" in page.locator(".lungseg-overlay select option").all_inner_texts()
            assert said().startswith(cases[1])                # the case picked, segmented

            body = page.inner_text("body")
            assert not PYTHON_ERROR.search(body), PYTHON_ERROR.search(body).group(0)
            assert not js_errors, js_errors
        finally:
            browser.close()
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings))
