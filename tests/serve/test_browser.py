"""The page of `edgereg serve` in a real browser: Playwright driving the system's Chromium (Debian's
`chromium` package; `.ci/run` installs it) against `edgereg serve` on a looping video.

It checks what a person at the analyzer sees: readings keep arriving, the image moves (a later
screenshot differs),  the number on the page is the one on /events, the page says "camera lost,
retrying" when the video disappears and recovers when it comes back, and it reconnects after the
server restarts. With EDGEREG_SCREENSHOT=docs/serve.png it also saves the page for the README.

Without a Chromium at /usr/bin/chromium (or without the playwright package) this test alone is
skipped, and says why.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import decode_jpeg, write_video

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow
PATIENCE = 60.0  # seconds to wait for a state on a busy machine; a passing test waits far less


def _browser_or_skip():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` (.ci/run does) "
                    "to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: make venv installs it (dev extra)")
    return sync_playwright


class Server:
    """`edgereg serve` in a subprocess; ``start()`` again restarts it on the same port."""

    def __init__(self, model: Path, video: Path) -> None:
        # run in the video's folder with a relative path: the page shows "file 'sample.avi'"
        self.argv = [sys.executable, "-m", "edgereg", "serve", str(model), "--camera", video.name]
        self.cwd = video.parent
        self.port = 0
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*self.argv, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, cwd=self.cwd)
        line = self.process.stderr.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"edgereg serve did not start: {line}{self.process.stderr.read()}"
        self.port = int(match.group(1))
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe drained

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Events:
    """/events read on a thread: {frame: reading} for the readings with a number."""

    def __init__(self, port: int) -> None:
        self.by_frame: dict[int, dict] = {}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", "/events")
        self.response = self.connection.getresponse()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                if line.startswith(b"data: "):
                    reading = json.loads(line[6:])
                    if reading["quality"] == "ok":
                        self.by_frame[reading["frame"]] = reading
        except Exception:
            pass

    def close(self) -> None:
        self.connection.close()


def _page_reading(page) -> dict:
    return page.evaluate("""() => {
        const values = document.getElementById('values');
        const number = values.querySelector('[data-target="conc"] .number');
        return {frame: values.dataset.frame, text: number ? number.textContent : null,
                received: Number(document.getElementById('received').textContent),
                connection: document.getElementById('connection').textContent};
    }""")


def poll(page, predicate, timeout_s: float) -> bool:
    """Wait until ``predicate(_page_reading(page))`` (polled from Python: the page's CSP forbids the
    string evaluation that Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate(_page_reading(page)):
            return True
        time.sleep(0.1)
    return False


def test_page_in_chromium_live_readings_match_events_and_recover(assay_model, tmp_path):
    sync_playwright = _browser_or_skip()
    video = write_video(tmp_path / "sample.avi", n=36, fps=12.0, size=(480, 640))  # a 3 s loop, three samples
    server = Server(assay_model, video)
    server.start()
    events = None
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 860})
            page = context.new_page()
            page.goto(server.url + "/")
            assert poll(page, lambda r: r["received"] > 0, PATIENCE), "no reading reached the page"
            events = Events(server.port)

            # readings keep arriving
            before = _page_reading(page)["received"]
            assert poll(page, lambda r: r["received"] >= before + 10, PATIENCE), before

            # the image moves: a later screenshot of the live frame differs
            frame = page.locator(".frame")
            first = decode_jpeg(frame.screenshot(type="jpeg"))

            def moved() -> bool:
                later = decode_jpeg(frame.screenshot(type="jpeg"))
                return first.shape == later.shape and np.abs(first.astype(int) - later.astype(int)).mean() > 0.5
            assert wait_until(moved, PATIENCE), "the live image does not move"

            # the number on the page is the one on /events for the same frame
            for _ in range(3):
                shown = _page_reading(page)
                frame_number = int(shown["frame"])
                assert wait_for_key(events.by_frame, frame_number, PATIENCE), f"frame {frame_number} not on /events"
                expected = events.by_frame[frame_number]["smoothed"]["conc"]
                decimals = len(shown["text"].split(".")[1]) if "." in shown["text"] else 0
                assert abs(float(shown["text"]) - expected) <= 0.5 * 10 ** -decimals + 1e-9, (shown, expected)
                time.sleep(0.3)
            assert page.inner_text("#state") in ("STABLE", "settling")
            assert "mg/L" in page.inner_text("#values") and "conc" in page.inner_text("#card")
            if os.environ.get("EDGEREG_SCREENSHOT"):
                page.screenshot(path=os.environ["EDGEREG_SCREENSHOT"], full_page=True)

            # the video disappears: the page says so; it comes back: the page resumes
            hidden = video.with_name("elsewhere.avi")
            video.rename(hidden)
            page.wait_for_selector("#banner:not([hidden])", timeout=PATIENCE * 1000)
            assert page.inner_text("#banner") == "camera lost, retrying"
            assert "camera lost" in page.inner_text("#state")
            hidden.rename(video)
            page.wait_for_selector("#banner[hidden]", state="attached", timeout=PATIENCE * 1000)
            resumed = _page_reading(page)["received"]
            assert poll(page, lambda r: r["received"] > resumed + 5, PATIENCE), "no readings after the video came back"
            assert page.inner_text("#state") in ("STABLE", "settling")

            # the server restarts: the page's event stream reconnects by itself
            events.close()
            server.stop()
            noticed = poll(page, lambda r: "reconnecting" in r["connection"], PATIENCE)
            assert noticed, "the page did not notice the restart"
            server.start()
            restarted = _page_reading(page)["received"]
            assert poll(page, lambda r: r["received"] > restarted + 5, PATIENCE), "the page did not reconnect"
            assert poll(page, lambda r: r["connection"] == "live", PATIENCE)
            context.close()
    finally:
        if events is not None:
            events.close()
        server.stop()


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def wait_for_key(mapping: dict, key, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while key not in mapping and time.monotonic() < deadline:
        time.sleep(0.05)
    return key in mapping
