"""The notebooks run top to bottom (nbclient, the test environment's own kernel) on the toy models, and the
probing notebook on a checkpoint and pairs file of the user's, without a line on stderr."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _execute(nb, cwd: Path) -> None:
    """Run ``nb`` in place; fail on an error or on anything written to stderr (warnings, progress bars)."""
    nbclient = pytest.importorskip("nbclient")
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    outputs = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for _, o in outputs if o.output_type == "error"]
    assert not [(i, o.text) for i, o in outputs if o.output_type == "stream" and o.name == "stderr"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(str(path), as_version=4)
    assert not [c for c in nb.cells if c.get("outputs")], "notebooks are stored without outputs"
    _execute(nb, tmp_path)
    assert len(NOTEBOOKS) == 3


@pytest.mark.slow
def test_probe_notebook_runs_on_your_checkpoint_and_pairs(tmp_path):
    """``01_probe_layers`` with ``MODEL`` and ``PAIRS`` set: a Llama checkpoint folder and a JSONL pairs file."""
    nbformat = pytest.importorskip("nbformat")
    from workbench.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "your-model", "llama", n_layers=3, d_model=32)
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"positive": "the cat is good", "negative": "the cat is bad"},  # no prompt: steered from the shared words
        {"prompt": "the dog is very", "positive": "happy", "negative": "sad"},
        {"prompt": "this house is", "positive": "good", "negative": "bad"},
        {"prompt": "we like the", "positive": "happy dog", "negative": "sad dog"},
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    nb = nbformat.read(str(NOTEBOOKS[0]), as_version=4)
    assert NOTEBOOKS[0].stem == "01_probe_layers"
    first = nb.cells[1]
    assert first.source.startswith("MODEL = None") and "\nPAIRS = None" in first.source
    first.source = first.source.replace("MODEL = None", f"MODEL = {str(folder)!r}", 1).replace(
        "PAIRS = None", f"PAIRS = {str(pairs)!r}", 1
    )
    _execute(nb, tmp_path)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert f"4 pairs from {pairs}" in printed and "LlamaForCausalLM, 3 layers" in printed
    assert "'the cat is' ->" in printed  # steered from the pairs' own prompts (or the words a pair's texts share)
