"""The playground in Debian's headless chromium, driven by Playwright (no browser download): it loads without a
console error, computing directions shows progress and draws the per-layer chart, moving the strength slider
changes the steered text, and saving a spec makes it appear in `/v1/steering`. Keeps a screenshot in
test-artifacts/serve-playground.png."""

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKEND
from workbench import models
from workbench.serve import ServeConfig, running

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
KEY = "browser-key-31d9"


def _chromium() -> "str | None":
    return shutil.which("chromium") or shutil.which("chromium-browser")


pytestmark = [
    pytest.mark.skipif(
        BACKEND != "bridge",
        reason="the playground's browser test runs once, under the bridge backend; the endpoints it calls are "
        "tested under both backends in tests/test_serve.py",
    ),
    pytest.mark.skipif(
        not _chromium() and not os.environ.get("WORKBENCH_REQUIRE_CHROMIUM"),
        reason="Debian's chromium is not installed (./dev test installs it)",
    ),
]


def _wait(page, expression: str, timeout: float = 60.0) -> None:
    """Poll ``expression`` in the page (Playwright's wait_for_function evaluates strings, which the page's CSP
    forbids) until it is true."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def _steered_texts(page) -> "list[str]":
    return page.locator('#compare td[data-column="2"] .continuation').all_inner_texts()


def test_playground_computes_charts_steers_and_saves_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    model = models.load("toy-m", backend=BACKEND)
    config = ServeConfig(specs=tmp_path / "specs", api_key=KEY)
    with running(config, model) as server, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=_chromium(),
            args=["--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(f"{server.url}/?api_key={KEY}")  # sets the session cookie, redirects to /
            assert page.url == f"{server.url}/"
            _wait(page, "document.querySelectorAll('#pairs-set option').length >= 5")
            page.wait_for_selector('#loaded li[data-spec="sentiment"]', timeout=30_000)

            page.select_option("#pairs-set", "sentiment")
            page.click("#compute")
            _wait(page, "window.playground.progressLog.some(e => e.state === 'done' || e.state === 'error')", 120)
            log = page.evaluate("window.playground.progressLog")
            assert log[0]["state"] != "done" and log[-1] == {**log[-1], "state": "done", "progress": 1}
            assert all(a["progress"] <= b["progress"] for a, b in zip(log, log[1:])), log
            assert page.eval_on_selector("#progress", "e => e.value") == 1
            n_layers = model.cfg.n_layers
            _wait(page, "document.querySelectorAll('#chart .scatterlayer .trace').length >= 2")
            points = page.eval_on_selector("#chart", "e => e.data.map(t => t.x.length)")
            assert points == [n_layers] * 3

            page.wait_for_selector('#compare[data-ready="1"]', timeout=120_000)
            before = _steered_texts(page)
            assert len(before) >= 2 and all(before)
            page.fill("#strength", "3")
            page.dispatch_event("#strength", "change")
            page.wait_for_selector('#compare[data-ready="1"][data-strength="3"]', timeout=120_000)
            after = _steered_texts(page)
            assert after != before  # the slider changed the steered text
            unsteered = page.locator('#compare td[data-column="0"] .continuation').all_inner_texts()
            assert unsteered and unsteered != after
            assert "perplexity" in page.inner_text("#compare tfoot")

            page.fill("#spec-name", "browser-edit")
            page.click("#save")
            page.wait_for_selector('#loaded li[data-spec="browser-edit"]', timeout=60_000)
            assert "saved browser-edit" in page.inner_text("#saved")
            download = page.request.get(server.url + str(page.get_attribute("#download-spec", "href")))
            assert download.ok and download.body()[:2] == b"PK"  # a zip of the spec folder

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "serve-playground.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            assert problems == [], problems
        finally:
            browser.close()
        listed = httpx.get(
            f"{server.url}/v1/steering", headers={"Authorization": f"Bearer {KEY}"}, trust_env=False
        ).json()
        saved = next(s for s in listed["data"] if s["id"] == "browser-edit")
        assert saved["interventions"][0]["scale"] == 3.0
        assert (tmp_path / "specs" / "browser-edit" / "intervention.json").is_file()
