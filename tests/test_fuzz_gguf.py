"""GGUF control vectors, ``workbench_bake.json``, toy cards and study results: each file is checked against its
declared schema, each bad one is one ``WorkbenchError``; ``tests/fuzzing/gguf.py`` fuzzes the GGUF reader."""

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import BACKEND
from tests.fuzzing import gguf as fuzz
from workbench import models, studies
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.export.bake import BAKE_MANIFEST, bake_hf, read_bake_manifest
from workbench.export.gguf import read_gguf, write_gguf
from workbench.export.spec import Provenance, Spec
from workbench.interventions import AddDirection
from workbench.schema import MAX_SCALE
from workbench.shipped import card, check_card
from workbench.sites import HookSite

ROOT = Path(__file__).resolve().parents[1]


def vec(n: int, seed: int = 0) -> np.ndarray:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)).numpy()


def foreign(path: Path, tensors: dict, *, hint: "str | None" = "llama") -> Path:
    """A control vector in repeng's layout (no workbench metadata): ``tensors`` maps a tensor name to its array."""
    import gguf

    w = gguf.GGUFWriter(str(path), "controlvector")
    if hint is not None:
        w.add_string("controlvector.model_hint", hint)
    w.add_uint32("controlvector.layer_count", len(tensors))
    for name, values in tensors.items():
        w.add_tensor(name, np.asarray(values, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_spec(model, layers=(1, 2), scale: float = 2.0) -> Spec:
    d = models.fingerprint(model).d_model
    ivs = tuple(AddDirection(HookSite(b), torch.from_numpy(vec(d, b)), scale) for b in layers)
    return Spec(ivs, models.fingerprint(model), Provenance("test"))


# ------------------------------------------------------------------------------------------------------ fuzzing


def test_fuzzing_the_gguf_reader_finds_no_raw_exception_and_no_silent_acceptance(llama, tmp_path):
    t0 = time.perf_counter()
    r = fuzz.run(300, 0, tmp_path, model=llama)
    assert time.perf_counter() - t0 < 30
    assert sum(r[k] for k in fuzz.KINDS) == 300
    bugs = {k: r["examples"][k] for k in fuzz.BUGS if r[k]}
    assert not bugs, bugs
    assert r["accepted_valid"] > 0 and r["refused"] > 0
    assert fuzz.run(300, 0, tmp_path / "again", model=llama) == r  # deterministic


# ------------------------------------------------------------------------------------------------------ GGUF


def test_foreign_gguf_without_checksum_is_accepted(llama, tmp_path):
    v1, v2 = vec(32, 1), vec(32, 2)
    for hint in ("llama", "LLaMA", "my fine-tuned model", None):
        spec = read_gguf(foreign(tmp_path / "r.gguf", {"direction.2": v2, "direction.1": v1}, hint=hint), llama)
        assert [iv.site for iv in spec.interventions] == [HookSite(1), HookSite(2)]
        assert np.array_equal(spec.interventions[0].vector.numpy(), v1)
        assert np.array_equal(spec.interventions[1].vector.numpy(), v2)


@pytest.mark.parametrize(
    "name", ["direction.\u0662", "direction.\uff11", "direction.01", "direction.1x", "direction. 1"]
)
def test_tensor_names_llamacpp_would_misread_are_refused(llama, tmp_path, name):
    p = foreign(tmp_path / "n.gguf", {name: vec(32)})
    with pytest.raises(WorkbenchError, match="ASCII digits" if not name[-1].isascii() else "not named direction.N"):
        read_gguf(p, llama)


@pytest.mark.parametrize("shape", [(32, 32), (32, 1), (2, 32)])  # numpy order: ggml's dims reversed
def test_a_direction_that_is_not_one_dimensional_is_refused(llama, tmp_path, shape):
    p = foreign(tmp_path / "s.gguf", {"direction.1": np.ones(shape)})
    with pytest.raises(WorkbenchError, match="must be a 1-D F32 tensor"):
        read_gguf(p, llama)


def test_trailing_dimensions_of_1_are_1d_as_llamacpp_counts_them(llama, tmp_path):
    v = vec(32)
    spec = read_gguf(foreign(tmp_path / "s.gguf", {"direction.1": v[None, :]}), llama)  # ggml dims [32, 1]
    assert np.array_equal(spec.interventions[0].vector.numpy(), v)


@pytest.mark.parametrize("hint", ["gpt2", "qwen2", "mistral", "gemma3_text", "gptneox"])
def test_metadata_naming_another_model_is_refused(llama, tmp_path, hint):
    p = foreign(tmp_path / "h.gguf", {"direction.1": vec(32)}, hint=hint)
    with pytest.raises(WorkbenchError, match=f"model_hint is '{hint}'.*made for another model"):
        read_gguf(p, llama)


def test_workbench_metadata_naming_another_model_is_refused(llama, gpt2, tmp_path):
    path = write_gguf(add_spec(gpt2), tmp_path / "cv.gguf")
    with pytest.raises(WorkbenchError, match="made for another model"):
        read_gguf(path, llama)


def test_a_flipped_payload_byte_in_our_gguf_is_refused_by_the_checksum(llama, tmp_path):
    path = write_gguf(add_spec(llama), tmp_path / "cv.gguf")
    assert read_gguf(path, llama).interventions[0].vector.numel() == 32
    raw = bytearray(path.read_bytes())
    raw[-4 * 5] ^= 1  # the lowest mantissa bit of an entry of the last tensor: still finite
    path.write_bytes(bytes(raw))
    with pytest.raises(WorkbenchError, match="do not match the sha256 .* re-export"):
        read_gguf(path, llama)


def test_a_damaged_metadata_key_does_not_drop_the_checksum(llama, tmp_path):
    path = write_gguf(add_spec(llama), tmp_path / "cv.gguf")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"workbench.spec")
    raw[at + 7] ^= 0x20  # workbenCh.spec: the file would otherwise read as a foreign one, unchecked
    raw[-4 * 5] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(WorkbenchError, match="looks like the workbench's workbench.spec under another name"):
        read_gguf(path, llama)


def test_our_gguf_records_the_checksum_of_its_tensors(llama, tmp_path):
    import gguf

    path = write_gguf(add_spec(llama), tmp_path / "cv.gguf")
    meta = json.loads(gguf.GGUFReader(str(path)).get_field("workbench.spec").contents())
    assert set(meta) == {"model", "provenance", "tensors_sha256"} and len(meta["tensors_sha256"]) == 64


@pytest.mark.parametrize(
    "raw",
    [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, b"not a gguf file at all", b"GGUF" + bytes(200)],
)
def test_corrupt_gguf_bytes_are_one_workbench_error(llama, tmp_path, raw):
    p = tmp_path / "bad.gguf"
    p.write_bytes(raw)
    with pytest.raises(WorkbenchError, match="not a readable GGUF file"):
        read_gguf(p, llama)


def test_an_array_length_past_the_end_is_refused_without_reading_it(llama, tmp_path):
    """gguf-py's reader loops without end on this file; ours refuses it at once."""
    d = fuzz.Desc(
        [("general.architecture", fuzz.STRING, "controlvector"), ("x.tags", fuzz.ARRAY, (fuzz.U8, []))],
        [("direction.1", (32,), fuzz.F32, vec(32).astype("<f4").tobytes())],
    )
    raw = bytearray(fuzz.emit(d))
    at = raw.find(b"x.tags") + len("x.tags") + 8
    raw[at : at + 8] = (2**40).to_bytes(8, "little")
    (tmp_path / "a.gguf").write_bytes(bytes(raw))
    with pytest.raises(WorkbenchError, match="claims 1099511627776 elements"):
        read_gguf(tmp_path / "a.gguf", llama)


def test_import_of_a_corrupt_gguf_is_one_error_line(ckpt_dirs, llama, tmp_path, capsys):
    path = write_gguf(add_spec(llama), tmp_path / "cv.gguf")
    raw = path.read_bytes()
    for i, bad in enumerate([raw[: len(raw) // 2], raw[:40] + b"\xff" * 8 + raw[48:]]):
        p = tmp_path / f"bad{i}.gguf"
        p.write_bytes(bad)
        out = tmp_path / f"spec{i}"
        code = main(["import", str(p), "--model", str(ckpt_dirs["llama"]), "--out", str(out), "--backend", BACKEND])
        _, err = capsys.readouterr()
        assert code == 2 and err.startswith("workbench: error: ") and err.count("\n") == 1, err
        assert not out.exists()


# ------------------------------------------------------------------------------------------------------ scales


def test_absurd_scales_are_refused_before_anything_is_written(llama, ckpt_dirs, tmp_path):
    for scale in (1e308, -2 * MAX_SCALE, float("nan")):
        spec = add_spec(llama)
        object.__setattr__(spec.interventions[0], "scale", scale)  # past AddDirection's own check
        with pytest.raises(WorkbenchError, match="scale"):
            write_gguf(spec, tmp_path / "cv.gguf")
        with pytest.raises(WorkbenchError, match="scale"):
            bake_hf(spec, ckpt_dirs["llama"], tmp_path / "baked")
    with pytest.raises(WorkbenchError, match="past what float32 holds"):  # the intervention refuses it itself
        AddDirection(HookSite(1), torch.full((32,), 1e35), 1e4)
    edit = AddDirection(HookSite(1), torch.full((32,), 1e35), 1.0)
    object.__setattr__(edit, "scale", 1e4)  # past AddDirection's own check: the writer refuses it too
    huge = Spec((edit,), models.fingerprint(llama), Provenance("test"))
    with pytest.raises(WorkbenchError, match="overflows float32"):
        write_gguf(huge, tmp_path / "cv.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def directions_folder(ckpt_dirs, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{s} is", "positive": "good", "negative": "bad"} for s in ("the cat", "a dog", "the sun")]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "dirs"
    argv = ["directions", "--model", str(ckpt_dirs["llama"]), "--pairs", str(pairs), "--out", str(out)]
    assert main([*argv, "--backend", BACKEND]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


@pytest.mark.parametrize("fmt, name", [("gguf", "cv.gguf"), ("hf-baked", "baked"), ("spec", "spec")])
def test_export_scale_1e308_is_refused_before_anything_is_written(directions_folder, ckpt_dirs, capsys, fmt, name):
    work = directions_folder.parent / "exports"
    work.mkdir()
    argv = ["export", "--vector", str(directions_folder), "--layers", "1", "--scale", "1e308", "--format", fmt]
    code = main([*argv, "--out", str(work / name), "--model", str(ckpt_dirs["llama"]), "--backend", BACKEND])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("workbench: error: ") and "internal error" not in err, err
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------------------------------------------ bake


def test_workbench_bake_json_is_validated(llama, ckpt_dirs, tmp_path):
    out = bake_hf(add_spec(llama), ckpt_dirs["llama"], tmp_path / "baked", dtype="float32")
    m = read_bake_manifest(out)
    assert m.dtype == "float32" and m.source_model.d_model == 32 and len(m.interventions) == 2
    good = json.loads((out / BAKE_MANIFEST).read_text())
    bad_cases = [
        ({**good, "dtype": 32}, r"dtype: input should be 'float32'"),
        ({**good, "edits": "all of them"}, "edits: input should be a valid list"),
        ({**good, "interventions": []}, "interventions: list should have at least 1 item"),
        ({**good, "source_model": {**good["source_model"], "d_model": 32.0}}, "source_model.d_model"),
        ({**good, "format": "workbench.intervention"}, "format"),
        ({**good, "unknown": 1}, "unknown: extra inputs are not permitted"),
        ({k: v for k, v in good.items() if k != "provenance"}, "provenance: field required"),
    ]
    scale_true = copy.deepcopy(good)
    scale_true["interventions"][0]["scale"] = True
    bad_cases.append((scale_true, r"interventions\[0\]"))
    for data, match in bad_cases:
        (out / BAKE_MANIFEST).write_text(json.dumps(data))
        with pytest.raises(WorkbenchError, match=f"{BAKE_MANIFEST}: .*{match}"):
            read_bake_manifest(out)
    (out / BAKE_MANIFEST).write_text("{")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        read_bake_manifest(out)
    (out / BAKE_MANIFEST).unlink()
    with pytest.raises(WorkbenchError, match="does not exist"):
        read_bake_manifest(out)


# ------------------------------------------------------------------------------------------------------ cards


def test_shipped_cards_pass_their_schema_and_wrong_types_are_refused():
    c = card("toy-s")
    assert c["name"] == "toy-s" and check_card(c, "card.json") is c
    cases = [
        (("training", "steps"), "4000", "training.steps: input should be a valid integer"),
        (("training", "lr"), True, "training.lr: input should be a valid number"),
        (("validation_loss",), None, "validation_loss: input should be a valid number"),
        (("measured", "checks", "truth_probe"), 1, "measured.checks.truth_probe: input should be a valid boolean"),
        (("measured", "steering", "topic", "best", "layer"), 1.5, "measured.steering.topic.best.layer"),
        (("kind",), "result", "kind: input should be 'card'"),
    ]
    for path, value, match in cases:
        bad = copy.deepcopy(c)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(WorkbenchError, match=f"^x/card.json: {match}"):
            check_card(bad, "x/card.json")
    check_card({**c, "a_new_measurement": [1, 2]}, "card.json")  # a card records more than the workbench reads


# ------------------------------------------------------------------------------------------------------ results


def test_study_results_refuse_fields_of_the_wrong_type():
    path = ROOT / "results" / "sensitivity" / "toy-s-register-layer_sweep.json"
    good = json.loads(path.read_text())
    assert studies.load_result(path).KIND == "layer_sweep"
    cases = [
        ({**good, "cells": {"0": good["cells"][0]}}, "cells: input should be a valid list"),
        ({**good, "best": [good["best"]]}, "best: input should be a valid dictionary"),
        ({**good, "config": "layers=all"}, "config: input should be a valid dictionary"),
        ({**good, "surprise": 1}, "surprise: extra inputs are not permitted"),
    ]
    for data, match in cases:
        with pytest.raises(WorkbenchError, match=f"^layer_sweep result: {match}"):
            studies.load_result(data)
    assert studies.load_result({**good, "best": None}).best is None
