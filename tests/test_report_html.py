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

    def set_window(self, width: int, height: int = 900) -> None:
        """Lay pages out as in a window of this size (CSS pixels)."""
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)

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
    assert ids == ["style", "diversity", "shift", "copying", "forgetting", "forecast", "task", "config"]
    assert_tables_fit(browser, report)
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


# --------------------------------------------------------------------------------------------------
# Layout at a 1400-pixel window, and the headlines of the demo's own pages

WINDOW = 1400
# For each table: its width, the width of the box it sits in, and its card's visible and full widths.
TABLE_FIT = """[...document.querySelectorAll('table')].map(t => {
    const card = t.closest('section.card, .summary');
    return {head: t.querySelector('th') ? t.querySelector('th').innerText : '',
            width: t.getBoundingClientRect().width, box: t.parentElement.clientWidth,
            card: card.clientWidth, card_full: card.scrollWidth};
})"""


def assert_tables_fit(browser: Browser, page: Path) -> None:
    """No table is wider than the box it sits in, and no card (so no page) is pushed wider than itself."""
    browser.set_window(WINDOW)
    browser.open(page)
    assert browser.errors() == []
    tables = browser.evaluate(TABLE_FIT)
    assert tables
    for t in tables:
        assert t["width"] <= t["box"] + 1 and t["card_full"] <= t["card"] + 1, (page.name, t)
    assert browser.evaluate("document.documentElement.scrollWidth") <= WINDOW


def headline(browser: Browser) -> dict[str, list[list[str]]]:
    """The summary cards: card title -> [kind, text] of each line."""
    return browser.evaluate("""Object.fromEntries([...document.querySelectorAll('#summary .model')].map(card =>
        [card.querySelector('h3').innerText,
         [...card.querySelectorAll('li')].map(li => [li.className, li.innerText.replace(/^(lost|gained) · /, '')])]))""")


def _sweep_page(root: Path, seeds: list[int]) -> Path:
    """A sweep's report over made-up rows (eight strategies, every column filled), as the sweep writes it."""
    import yaml

    from sftlab.recipes.sweep import aggregate, load_sweep
    from sftlab.recipes.sweep_report import write_sweep_report

    names = ["full", "lora", "dora", "neftune", "replay", "kl", "gem", "wise0.5"]
    config = root / "sweep.yaml"
    config.write_text(yaml.safe_dump({"base_model": "base", "out": str(root / "sweep"), "seeds": seeds,
                                      "train": {"train_file": "train.jsonl"}, "audit": {"prompts": "p.jsonl"},
                                      "strategies": [{"name": n} for n in names]}))
    row = {"eval_loss": 0.7512, "task_score": 0.4312, "diversity_kept_per_input": 0.7312,
           "diversity_kept_across_input": 0.8123, "genres_covered": 3.0, "genre_entropy": 0.912,
           "delta_perplexity": 12.34, "delta_benchmark": -0.0612, "shifted": 0.1234, "train_seconds": 1234.5,
           "peak_memory_mb": 12345.0, "trainable_params": 134515008}
    rows = [{"strategy": n, "seed": s, **{k: v * (1 + 0.01 * s) for k, v in row.items()}} for s in seeds for n in names]
    return write_sweep_report(root / "sweep", aggregate(rows, names), load_sweep(str(config)))


def test_the_sweep_table_fits_its_card(browser, tmp_path) -> None:
    # Two seeds: every cell is "mean ± std", the widest the table gets.
    assert_tables_fit(browser, _sweep_page(tmp_path, [0, 1]))


def test_the_demo_pages_headlines_name_what_each_run_found(browser, demo) -> None:
    sweep = demo / "sweep"
    assert_tables_fit(browser, sweep / "sweep.html")
    cards = headline(browser)
    width, height = browser.screenshot(sweep / "sweep.png")
    assert width >= 1000 and height > 1000
    table = json.loads((sweep / "sweep.json").read_text())
    assert set(cards) == set(table["strategies"])
    found_any = False
    for row in table["rows"]:
        run = sweep / "runs" / row["strategy"] / f"seed{row['seed']}" / "audit"
        doc = json.loads((run / "report.json").read_text())
        label = f"{row['strategy']}/seed{row['seed']}"  # the run is labelled by strategy and seed
        assert list(doc["models"])[1] == label
        stated = sorted([f["kind"], f["text"]] for f in doc["summary"] if f["kind"] in ("lost", "gained"))
        found_any |= bool(stated)
        # One seed per strategy: the sweep's card says what the run's own audit found, word for word.
        assert sorted(line for line in cards[row["strategy"]] if line[0] in ("lost", "gained")) == stated, row["strategy"]
        # ... and so does the run's own page, under its label.
        assert_tables_fit(browser, run / "report.html")
        own = headline(browser)
        assert list(own) == [label]
        assert sorted(line for line in own[label] if line[0] in ("lost", "gained")) == stated
    assert found_any, "no run of the quick demo found a loss or gain: the check above proved nothing"
    browser.screenshot(sweep / "runs" / "full" / "seed0" / "audit" / "report.png")

