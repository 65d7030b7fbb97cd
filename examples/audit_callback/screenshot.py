"""Screenshot TensorBoard's time series of the ``audit/*`` scalars that ``train.py`` logged (headless Chromium).

    PYTHONPATH=src .venv/bin/python examples/audit_callback/screenshot.py \
        --logdir runs/audit_callback/tb --out docs/img/audit_callback_tensorboard.png

It starts ``tensorboard --logdir LOGDIR`` on a free local port, opens its Time Series page in headless Chromium
through the DevTools protocol (over a pipe, so nothing beyond the standard library), sets TensorBoard's own
settings (no smoothing, no outlier clipping: a few audit points, drawn as logged), filters the cards to the
audit's values, waits until every chart has drawn, and saves the page as a PNG. Chromium runs without WebGL, so
TensorBoard draws its charts as SVG. Needs ``chromium`` on PATH and tensorboard (``pip install tensorboard==2.21.0``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

# TensorBoard's settings, as its frontend stores them in localStorage ("_tb_global_settings").
TB_SETTINGS = {"scalarSmoothing": 0, "ignoreOutliers": False, "timeSeriesSettingsPaneOpened": False,
               "stepSelectorEnabled": False, "sideBarWidthInPercent": 12, "timeSeriesCardMinWidth": 520}
# The logged values themselves; their _low/_high (the 95% interval) would be separate cards.
TAG_FILTER = "audit/(forecast_kl|style_capture|adherence|perplexity)$"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout:.0f} s")
            time.sleep(0.5)


class Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
    messages ending in a NUL byte, the browser reading fd 3 and writing fd 4), one tab, no extra package."""

    def __init__(self, chromium: str, profile: str, width: int, height: int) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-webgl", "--hide-scrollbars",
                f"--window-size={width},{height}", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "about:blank"]
        # The shell puts the pipe ends on fds 3 and 4, where Chromium looks for them.
        self.proc = subprocess.Popen(["sh", "-c", f"exec {shlex.join(argv)} 3<&{to_browser} 4>&{from_browser}"],
                                     pass_fds=(to_browser, from_browser), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: object) -> dict:
        """Send one command (to the tab once attached) and return its result; events in between are skipped."""
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise SystemExit("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def eval(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self._out)
        os.close(self._in)


def capture(browser: Browser, url: str, cards: int, out: Path, timeout: float) -> None:
    """Load ``url`` with TensorBoard's settings set, wait until ``cards`` charts have drawn, save the PNG."""
    browser.call("Page.navigate", url=url)
    time.sleep(2)
    # Settings live in the page's origin: set them there, then reload so that TensorBoard reads them.
    browser.eval(f"localStorage.setItem('_tb_global_settings', {json.dumps(json.dumps(TB_SETTINGS))})")
    browser.call("Page.reload", ignoreCache=True)
    deadline = time.monotonic() + timeout
    drawn = 0
    while drawn < cards:  # each scalar card draws its line as an SVG path once its data has arrived
        if time.monotonic() > deadline:
            raise SystemExit(f"only {drawn} of {cards} charts drew within {timeout:.0f} s")
        time.sleep(1)
        drawn = int(browser.eval(
            "[...document.querySelectorAll('scalar-card')].filter(c => c.querySelector('svg path')).length") or 0)
    time.sleep(2)  # let the last chart finish its layout
    shot = browser.call("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logdir", default="runs/audit_callback/tb")
    ap.add_argument("--out", default="docs/img/audit_callback_tensorboard.png")
    ap.add_argument("--cards", type=int, default=4, help="charts the tag filter shows (4 with --sft-data)")
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--height", type=int, default=870)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no chromium on PATH")
    port = free_port()
    tensorboard = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir,
                                    "--port", str(port), "--host", "127.0.0.1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="audit-callback-chromium-")
    browser = None
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for_http(base, args.timeout)
        browser = Browser(chromium, profile, args.width, args.height)
        url = base + "?" + urllib.parse.urlencode({"tagFilter": TAG_FILTER, "smoothing": 0}) + "#timeseries"
        capture(browser, url, args.cards, Path(args.out), args.timeout)
        print(f"wrote {args.out}")
    finally:
        if browser is not None:
            browser.close()
        tensorboard.terminate()
        tensorboard.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
