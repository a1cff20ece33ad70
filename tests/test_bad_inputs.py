"""Bad checkpoints, caches, GGUF paths, folders and cards: each is one clear error line (exit 2), never a crash."""

import json
import os
import shutil

import pytest

from tests.conftest import BACKEND
from workbench import shipped
from workbench.cli import main
from workbench.errors import WorkbenchError


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv) -> str:
    """Run the CLI on a bad input: exit 2 and exactly one stderr line that is not an internal error."""
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "internal error" not in err, err
    return lines[0]


@pytest.fixture
def toy_copy(tmp_path):
    """A writable copy of the shipped toy-s checkpoint."""
    folder = tmp_path / "toy-s"
    shutil.copytree(shipped.checkpoint_dir("toy-s"), folder)
    return folder


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# ------------------------------------------------------------------------------------ bad checkpoint folders


def _truncate_weights(folder):
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_truncate_weights, id="truncated-safetensors"),
        pytest.param(lambda f: _edit_config(f, hidden_size="abc"), id="hidden_size-string"),
        pytest.param(lambda f: _edit_config(f, num_attention_heads=3), id="heads-not-dividing"),
        pytest.param(lambda f: _edit_config(f, num_hidden_layers=-1), id="layers-negative"),
        pytest.param(lambda f: _edit_config(f, num_hidden_layers=0), id="layers-zero"),
        pytest.param(lambda f: _edit_config(f, hidden_size=0), id="hidden_size-zero"),
        pytest.param(lambda f: _edit_config(f, vocab_size=0), id="vocab_size-zero"),
        pytest.param(lambda f: (f / "config.json").write_text("[1, 2]"), id="config-list"),
        pytest.param(lambda f: _edit_config(f, architectures="LlamaForCausalLM"), id="architectures-string"),
        pytest.param(lambda f: ((f / "config.json").unlink(), (f / "config.json").mkdir()), id="config-directory"),
    ],
)
def test_a_broken_checkpoint_is_one_error_naming_the_folder(toy_copy, capsys, damage):
    damage(toy_copy)
    line = refused(capsys, "info", "--model", str(toy_copy), "--backend", BACKEND)
    assert str(toy_copy) in line, line


def test_a_missing_folder_keeps_its_message(tmp_path, capsys):
    line = refused(capsys, "info", "--model", str(tmp_path / "nope"), "--backend", BACKEND)
    assert "does not exist" in line


# ------------------------------------------------------------------------------------ fingerprint cache


def _info(capsys) -> dict:
    code, out, err = run(capsys, "info", "--model", "toy-s", "--backend", BACKEND)
    assert code == 0 and "internal error" not in err, err
    return json.loads(out)["fingerprint"]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_text("[" * 200000 + "]" * 200000), id="deeply-nested"),
        pytest.param(lambda p: p.mkdir(), id="a-directory"),
        pytest.param(lambda p: p.write_text("{not json"), id="not-json"),
    ],
)
def test_a_broken_fingerprint_cache_costs_only_a_rehash(tmp_path, monkeypatch, capsys, make):
    cache = tmp_path / "cache"
    cache.mkdir()
    make(cache / "fingerprints.json")
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(cache))
    fp = _info(capsys)
    assert len(fp["weights_sha256"]) == 64
    assert fp == _info(capsys)


def test_a_cached_hash_that_is_not_a_sha256_is_not_trusted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    real = _info(capsys)
    path = tmp_path / "fingerprints.json"
    for bad in ["Z" * 64, "A" * 64, "0" * 63 + "g", 12345, None]:
        path.write_text(json.dumps({k: bad for k in json.loads(path.read_text())} or {"x": bad}))
        assert _info(capsys) == real
        assert all(v == real["weights_sha256"] for v in json.loads(path.read_text()).values())


# ------------------------------------------------------------------------------------ GGUF path is not a file


def test_import_names_a_directory(tmp_path, capsys):
    (tmp_path / "v.gguf").mkdir()
    argv = ["import", str(tmp_path / "v.gguf"), "--model", "toy-s", "--backend", BACKEND, "--out", str(tmp_path / "o")]
    assert "is a directory" in refused(capsys, *argv)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_import_names_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "v.gguf")
    argv = ["import", str(tmp_path / "v.gguf"), "--model", "toy-s", "--backend", BACKEND, "--out", str(tmp_path / "o")]
    assert "is not a regular file (a FIFO or device?)" in refused(capsys, *argv)


# ------------------------------------------------------------------------------------ folder is not a folder


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_directions_load_names_a_fifo_and_a_file(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    base = ["steer", "--model", "toy-s", "--backend", BACKEND, "--layer", "0", "--scale", "1", "--prompt", "a"]
    assert "FIFO or device" in refused(capsys, *base, "--vector", str(tmp_path / "fifo"))
    assert "is a file, not a directions folder" in refused(capsys, *base, "--vector", str(tmp_path / "file"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_spec_load_names_a_fifo_and_a_file(tmp_path):
    from workbench.export.spec import Spec

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorkbenchError, match="FIFO or device"):
        Spec.load(tmp_path / "fifo")
    with pytest.raises(WorkbenchError, match="is a file, not a spec folder"):
        Spec.load(tmp_path / "file")


# ------------------------------------------------------------------------------------ toy measure: bad card


@pytest.mark.parametrize("card", ["[1]", "{}"])
def test_toy_measure_refuses_a_bad_card_before_loading(toy_copy, capsys, monkeypatch, card):
    from workbench import models

    (toy_copy / "card.json").write_text(card)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("the model was loaded before the card check"))
    line = refused(capsys, "toy", "measure", "--model", str(toy_copy), "--backend", BACKEND, "--n-prompts", "1")
    assert "card.json" in line
