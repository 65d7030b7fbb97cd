"""report.html in a real browser: headless Chromium, driven over the DevTools protocol, with no console errors.

Chromium is Debian's ``chromium`` package; when it is missing the set-up installs it with apt-get (as
root), and the tests skip with a message when that cannot be done. The DevTools client speaks CDP over
``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON), so it needs no websocket
library: console errors, uncaught exceptions and failed loads arrive as events we collect.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sftlab.config import AuditConfig, build_config
from sftlab.recipes.audit import run_audit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary, installed with apt-get when missing and possible."""
    exe = _find_chromium()
    if exe is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run("apt-get update && apt-get install -y chromium", shell=True, env=env, timeout=900,
                           capture_output=True, check=False)
        except subprocess.TimeoutExpired:
            pass
        exe = _find_chromium()
    if exe is None:
        pytest.skip("headless Chromium is not available and could not be installed "
                    "(run `apt-get install -y chromium` as root to enable the browser check)")
    return exe


class Browser:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="sftlab-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipes() -> None:  # runs in the child: CDP expects to read fd 3 and write fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             "--window-size=1280,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def open(self, path: Path, timeout: float = 60) -> None:
        """Navigate to a local file and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._read(deadline))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen since the last open()."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", "") + " " +
                           str(p["exceptionDetails"].get("exception", {}).get("description", "")))
            elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append("log: " + p["entry"]["text"])
        return out

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         session=True)["result"]["value"]

    def screenshot(self, out: Path) -> tuple[int, int]:
        """Full-page PNG; returns its CSS size."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        w, h = int(size["width"]), int(min(size["height"], 16000))
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}},
                         session=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return w, h

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium):
    b = Browser(chromium)
    yield b
    b.close()


def test_harness_sees_console_errors(browser, tmp_path) -> None:
    """The check below can fail: a page with a console.error and an uncaught exception is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><script>console.error('bad thing');"
                    "throw new Error('boom');</script></body></html>")
    browser.open(page)
    errors = browser.errors()
    assert any("bad thing" in e for e in errors) and any("boom" in e for e in errors), errors


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_model_dir, tiny_tokenizer, shared_data) -> Path:
    from test_audit_e2e import train_copy, write_inputs

    root = tmp_path_factory.mktemp("report_html")
    files = write_inputs(root / "data", shared_data)
    lines = [l for l in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if l][:400]
    base = train_copy(tiny_model_dir, root / "base", lines, tiny_tokenizer, steps=20, lr=3e-3)
    sft = [f"{r['prompt']}\n{r['completion']}" for r in map(json.loads, files["sft.jsonl"].read_text().splitlines())]
    tuned = train_copy(base, root / "sft-full", sft, tiny_tokenizer, steps=12, lr=3e-3)
    cfg = build_config(AuditConfig, {
        "base": str(base), "tuned": [str(tuned)], "prompts": str(files["prompts.jsonl"]),
        "sft_data": str(files["sft.jsonl"]), "reference": [str(files["ref.txt"])],
        "benchmark": [str(files["bench.jsonl"])], "eval_set": str(files["eval.jsonl"]), "out": str(root / "audit"),
        "sampling": {"num_samples": 3, "max_new_tokens": 16}, "bootstrap_samples": 100})
    return run_audit(cfg)


def test_report_renders_without_console_errors(browser, report) -> None:
    browser.open(report)
    assert browser.errors() == []
    # Every embedded plot decoded to a real image, and every section made it into the page.
    sizes = browser.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) >= 4 and all(done and width > 100 for done, width in sizes), sizes
    ids = browser.evaluate("[...document.querySelectorAll('section.card')].map(s => s.id)")
    assert ids == ["diversity", "shift", "copying", "forgetting", "task", "config"]
    shot = report.parent / "report.png"
    width, height = browser.screenshot(shot)
    assert shot.stat().st_size > 50_000 and width >= 1000 and height > 2000
    print(f"screenshot: {shot}")


def test_token_view_renders_without_console_errors(browser, report) -> None:
    browser.open(report.parent / "token_view.html")
    assert browser.errors() == []
    counts = browser.evaluate("['unshifted','marginal','shifted'].map(c => document.querySelectorAll('.tok.' + c).length)")
    assert sum(counts) > 0
    browser.screenshot(report.parent / "token_view.png")


def test_token_pieces_rebuild_the_text_and_newline_runs_stay_short(tiny_tokenizer) -> None:
    import numpy as np

    from sftlab.audit.report.token_view import answer_html, token_pieces
    from sftlab.audit.shift import AnswerShift

    text = "Café ☕ ok\n\n\n\nend"  # multi-byte characters split across byte-level tokens
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tiny_tokenizer, ids)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    n = len(ids)
    shift = AnswerShift(ids, np.array([1, 2, 5] * n)[:n], np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=int))
    html = answer_html(shift, tiny_tokenizer)
    assert html.count("↵") == 4 and html.count("\n") == 1  # four newlines shown, one line break kept
    assert 'class="tok shifted"' in html and 'class="tok marginal"' in html
