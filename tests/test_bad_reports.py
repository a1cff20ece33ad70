"""Bad report inputs and odd file names: each is one clear error line (or a correct run), never an "internal error"."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from workbench.cli import main
from workbench.report import collect_sections

ROOT = Path(__file__).resolve().parents[1]
CARD = json.loads((ROOT / "workbench/toy/checkpoints/toy-s/card.json").read_text())
PARITY_ROW = {"path": "apply_hf", "max_abs_diff": 1e-6, "effect": 2.5, "off_by_one": None, "n_tokens": 12}
#: a lone surrogate is how Python passes a file-name byte that is not UTF-8
ODD = os.fsdecode(b"\xff")


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    return err


@pytest.mark.parametrize(
    "result, match",
    [
        ({"kind": "demo"}, "not a complete demo result"),
        ({"kind": "parity", "rows": [1]}, "spec"),
        ({"kind": "parity", "spec": "s", "rows": [1], "refused": []}, "rows"),
        ({"kind": "parity", "spec": "s", "rows": [{"path": "x"}], "refused": []}, "rows"),
        ({"kind": "parity", "spec": "s", "rows": [{**PARITY_ROW, "n_tokens": "12"}], "refused": []}, "n_tokens"),
        ({"kind": "parity", "spec": "s", "rows": [], "refused": [3]}, "refused"),
        (
            {
                "kind": "layer_sweep",
                "schema_version": 1,
                "config": {},
                "model": {},
                "cells": [],
                "reading": [],
                "best": None,
                "cost": {},
            },
            "layer_sweep",
        ),
        ({"kind": "model_size", "schema_version": 1, "config": {}, "models": [], "cost": {}}, "model_size"),
        ({**CARD, "size": {"a": 1}}, "not a complete card result"),
    ],
)
def test_a_malformed_result_of_a_known_kind_is_one_error(result, match, tmp_path, capsys):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "r.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    err = one_error(capsys, "report", str(tmp_path / "res"), "--out", str(out))
    assert "r.json" in err and match in err
    assert "re-run" in err
    assert not out.exists()  # a failed report leaves no folder behind


def test_a_complete_parity_result_with_a_bom_is_a_section(tmp_path):
    result = {"kind": "parity", "spec": "sentiment: x2", "rows": [PARITY_ROW], "refused": ["llama.cpp missing"]}
    (tmp_path / "parity.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(result).encode())  # a BOM is accepted
    (tmp_path / "notes.json").write_bytes(b'{"kind": "demo", "x": "\xff"}')  # not UTF-8: not part of the report
    (sec,) = collect_sections(tmp_path)
    assert sec.kind == "parity" and "| apply_hf | 1.0e-06 | 2.50 | n/a |" in sec.markdown


def test_a_title_that_is_not_utf8_is_refused(tmp_path, capsys):
    shutil.copy(ROOT / "workbench/toy/checkpoints/toy-s/card.json", tmp_path / "card.json")
    err = one_error(capsys, "report", str(tmp_path), "--out", str(tmp_path / "out"), "--title", "a" + ODD)
    assert "--title" in err and "UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_error(tmp_path, capsys):
    shutil.copy(ROOT / "workbench/toy/checkpoints/toy-s/card.json", tmp_path / "card.json")
    (tmp_path / "taken").write_text("x")
    err = one_error(capsys, "report", str(tmp_path), "--out", str(tmp_path / "taken"))
    assert "is a file" in err
    err = one_error(capsys, "report", str(tmp_path), "--out", str(tmp_path / "taken" / "sub"))
    assert "could not be created" in err
    assert (tmp_path / "taken").read_text() == "x"


def test_folder_and_file_names_that_are_not_utf8(tmp_path, capsys):
    results = tmp_path / f"res{ODD}"
    (results / f"sub{ODD}").mkdir(parents=True)
    shutil.copy(ROOT / "workbench/toy/checkpoints/toy-s/card.json", results / f"sub{ODD}" / f"card{ODD}.json")
    code, _, err = run(capsys, "report", str(results), "--out", str(tmp_path / f"out{ODD}"))
    assert code == 0, err
    md = (tmp_path / f"out{ODD}" / "report.md").read_bytes().decode("utf-8")
    page = (tmp_path / f"out{ODD}" / "report.html").read_bytes().decode("utf-8")
    assert "res\\xff" in md and "sub\\xff/card\\xff.json" in md and "sub\\xff/card\\xff.json" in page
    (results / f"sub{ODD}" / "bad.json").write_text(json.dumps({"kind": "demo"}))
    err = one_error(capsys, "report", str(results), "--out", str(tmp_path / "out2"))
    assert "bad.json" in err and not (tmp_path / "out2").exists()


def test_provenance_of_a_folder_name_that_is_not_utf8(tmp_path, capsys):
    from workbench.export.gguf import read_gguf
    from workbench.export.spec import Spec

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{s} is", "positive": "good", "negative": "bad"} for s in ("the cat", "a dog", "the sun", "we")]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    made = tmp_path / "made"
    code, _, err = run(
        capsys, "directions", "--model", "toy-s", "--pairs", str(pairs), "--out", str(made), "--backend", BACKEND
    )
    assert code == 0, err
    ds = tmp_path / os.fsdecode(b"ds\xff")
    shutil.copytree(made, ds)
    spec = tmp_path / "spec"
    code, _, err = run(capsys, "export", "--vector", str(ds), "--format", "spec", "--out", str(spec), "--layers", "1")
    assert code == 2 and "--scale" in err
    edit = ["--layers", "1", "--scale", "2"]
    code, _, err = run(capsys, "export", "--vector", str(ds), "--format", "spec", "--out", str(spec), *edit)
    assert code == 0, err
    assert Spec.load(spec).provenance.source.endswith("ds\\xff")
    gguf = tmp_path / "cv.gguf"
    code, _, err = run(capsys, "export", "--vector", str(spec), "--format", "gguf", "--out", str(gguf))
    assert code == 0, err
    odd = tmp_path / f"cv{ODD}.gguf"
    shutil.copy(gguf, odd)
    read_gguf(odd).save(tmp_path / "back")  # the recorded source is the file name, escaped
    assert Spec.load(tmp_path / "back").provenance.source.startswith("cv\\xff.gguf sha256:")
