"""The committed study results belong to the shipped checkpoints, and their SUMMARY tables match their JSON."""

import json
from pathlib import Path

import pytest

from analyses import study_tables
from workbench.toy import NAMES, card

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: Folders of studies run on the shipped family; results/toy_v5_pilot holds cards of other checkpoints.
STUDIES = ("sensitivity", "robustness", "spectral", "composition", "tuning")


def _fingerprinted(node):
    """Every ``{"name": <toy size>, "fingerprint": {...}}`` inside a saved result."""
    if isinstance(node, dict):
        if node.get("name") in NAMES and isinstance(node.get("fingerprint"), dict):
            yield node["name"], node["fingerprint"]
        for value in node.values():
            yield from _fingerprinted(value)
    elif isinstance(node, list):
        for value in node:
            yield from _fingerprinted(value)


def test_every_committed_result_was_computed_on_the_shipped_checkpoint():
    shipped = {n: card(n)["measured"]["fingerprint"]["weights_sha256"] for n in NAMES}
    files = [
        f
        for s in STUDIES
        for f in sorted((RESULTS / s).rglob("*.json"))
        if not {"figures", "tuned-model"} & set(f.relative_to(RESULTS).parts)
    ]  # plots; a git-ignored copy
    assert len(files) > 50
    seen = 0
    for f in files:
        for name, fp in _fingerprinted(json.loads(f.read_text())):
            assert fp["weights_sha256"] == shipped[name], f"{f.relative_to(RESULTS)} is stale for {name}: rerun it"
            seen += 1
    assert seen >= len(files)


@pytest.mark.parametrize("study", ["spectral", "composition", "tuning"])
def test_summary_tables_are_rebuilt_from_the_json(study):
    folders = sorted((p.parent for p in (RESULTS / study).glob("*/result.json")), key=lambda f: NAMES.index(f.name))
    results = [json.loads((f / "result.json").read_text()) for f in folders]
    assert (RESULTS / study / "SUMMARY.md").read_text().startswith(study_tables.markdown(study, results))


def test_bad_folders_get_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study_tables.main(["tuning", str(tmp_path)])
    assert "result.json does not exist; run `workbench analyze tuning --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_tables.main(["composition", str(RESULTS / "composition" / "toy-m"), str(RESULTS / "tuning" / "toy-m")])
    assert "this table takes one result; got 2." in capsys.readouterr().err
    assert set(study_tables.with_tables()) == {"spectral", "composition", "tuning"}
