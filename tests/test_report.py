"""Reports: sections from real results, a self-contained page that draws every figure in headless Chromium."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.report import build_report, collect_sections

ROOT = Path(__file__).resolve().parents[1]
RESULTS = [
    "results/sensitivity/toy-m-sentiment-layer_sweep.json",
    "results/sensitivity/toy-m-sentiment-heads.json",
    "results/spectral/toy-m/result.json",
    "results/robustness/sample_size-toy-m-sentiment.json",
    "results/robustness/distribution_shift-toy-m-sentiment.json",
    "results/robustness/model_size-sentiment.json",
    "results/robustness/adversarial-toy-l-sentiment-gcg-4.json",
    "workbench/toy/checkpoints/toy-m/card.json",
]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    for i, rel in enumerate(RESULTS):
        shutil.copy(ROOT / rel, folder / f"{i:02d}-{Path(rel).name}")
    html_path, md_path = build_report(folder, title="test report")
    return folder, html_path, md_path


def test_sections_are_written_from_the_numbers(report):
    folder, html_path, md_path = report
    md = md_path.read_text()
    sweep = json.loads((ROOT / RESULTS[0]).read_text())
    b = sweep["best"]
    assert f"layer {b['layer']} (relative depth {b['depth']:.2f}) at strength {b['strength']:g}" in md
    sat = json.loads((ROOT / RESULTS[3]).read_text())["saturation_n"]
    assert f"returns diminish at N = {sat} pairs" in md
    adv = json.loads((ROOT / RESULTS[6]).read_text())
    assert adv["suffix"]["text"] in md and "reversal rate" in md
    kinds = [s.kind for s in collect_sections(folder)]
    assert kinds[0] == "card" and {
        "layer_sweep",
        "heads",
        "spectral",
        "sample_size",
        "distribution_shift",
        "model_size",
        "adversarial",
    } <= set(kinds)
    page = html_path.read_text()
    assert not re.search(r"<script[^>]+src=", page) and "Plotly.newPlot" in page  # offline: plotly.js inline
    assert page.count('class="report-figure"') >= 12


def test_card_section_says_what_was_measured(tmp_path):
    card = json.loads((ROOT / "workbench/toy/checkpoints/toy-m/card.json").read_text())
    missed = sorted(k for k, ok in card["measured"]["checks"].items() if not ok)
    (tmp_path / "measured").mkdir()
    (tmp_path / "measured" / "card.json").write_text(json.dumps(card))
    (tmp_path / "bare").mkdir()  # a card straight from training (--no-measure): no checks to count
    (tmp_path / "bare" / "card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "measured"}))
    texts = {s.source: s.markdown for s in collect_sections(tmp_path)}
    n = len(card["measured"]["checks"])
    assert f"bars met {n - len(missed)} of {n}" in texts["measured/card.json"]
    assert all(k in texts["measured/card.json"] for k in missed)
    assert "properties not measured" in texts["bare/card.json"] and "bars met" not in texts["bare/card.json"]


def test_report_errors(tmp_path):
    with pytest.raises(WorkbenchError, match="no workbench results"):
        build_report(tmp_path)
    with pytest.raises(WorkbenchError, match="not a folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="no workbench results"):
        build_report(tmp_path)


def _chromium() -> "str | None":
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    not _chromium() and not os.environ.get("WORKBENCH_REQUIRE_CHROMIUM"),
    reason="Debian's chromium is not installed (./dev test installs it)",
)
def test_every_figure_draws_in_headless_chromium(report):
    folder, html_path, _ = report
    base = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--virtual-time-budget=30000",
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    dom = subprocess.run([*base, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=180)
    m = re.search(r'<script type="application/json" id="report-status">([^<]*)</script>', dom.stdout)
    assert m, dom.stderr[-2000:]
    status = json.loads(m.group(1))
    assert status["errors"] == [] and status["figures"] >= 12 and status["drawn"] == status["figures"], status
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [*base, "--window-size=1280,4000", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000
