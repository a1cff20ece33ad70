import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BACKEND
from workbench.cli import main
from workbench.directions import DirectionSet


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"{s} is", "positive": "good", "negative": "bad"} for s in ("the cat", "a dog", "the sun", "we")]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info(ckpt_dirs, capsys):
    code, out, err = run(capsys, "info", "--model", str(ckpt_dirs["llama"]), "--backend", BACKEND)
    assert code == 0, err
    info = json.loads(out)
    assert info["n_layers"] == 3 and info["architecture"] == "LlamaForCausalLM" and info["backend"] == BACKEND


def test_directions_then_steer(ckpt_dirs, pairs_file, tmp_path, capsys):
    out_dir = tmp_path / "dirs"
    code, out, err = run(
        capsys,
        "directions",
        "--model",
        str(ckpt_dirs["llama"]),
        "--pairs",
        str(pairs_file),
        "--out",
        str(out_dir),
        "--method",
        "pca",
        "--layers",
        "0-1",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    manifest = json.loads((out_dir / "directions.json").read_text())
    assert manifest["method"] == "pca" and manifest["position"] == "last"
    assert [d["site"]["layer"] for d in manifest["directions"]] == [0, 1]
    assert manifest["model"]["architecture"] == "LlamaForCausalLM" and len(manifest["provenance"]["data_hash"]) == 64
    code, out, err = run(
        capsys,
        "steer",
        "--model",
        str(ckpt_dirs["llama"]),
        "--vector",
        str(out_dir),
        "--layer",
        "1",
        "--scale",
        "4",
        "--prompt",
        "the cat",
        "--prompt",
        "we",
        "--max-new-tokens",
        "4",
        "--compare",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["scale"], x["prompt"]) for x in lines] == [(0.0, "the cat"), (0.0, "we"), (4.0, "the cat"), (4.0, "we")]


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["directions", "--model", "{llama}", "--pairs", "{missing}", "--out", "{out}"],
            "pairs file .* does not exist",
        ),
        (
            ["directions", "--model", "./nope", "--pairs", "{pairs}", "--out", "{out}"],
            "model folder './nope' does not exist",
        ),
        (["directions", "--model", "{llama}", "--pairs", "{pairs}", "--out", "{out}", "--layers", "7"], "has 3 blocks"),
        (
            ["directions", "--model", "{llama}", "--pairs", "{pairs}", "--out", "{out}", "--layers", "x"],
            "--layers: takes blocks like 2",
        ),
        (
            ["directions", "--model", "{llama}", "--pairs", "{pairs}", "--out", "{out}", "--kind", "resid"],
            "HookSite.kind",
        ),
        (
            ["directions", "--model", "{llama}", "--pairs", "{pairs}", "--out", "{out}", "--method", "svm"],
            "invalid choice",
        ),
        (
            ["steer", "--model", "{llama}", "--vector", "{missing}", "--layer", "0", "--scale", "1", "--prompt", "a"],
            "not a directions folder",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_errors_are_one_line_with_no_partial_output(ckpt_dirs, pairs_file, tmp_path, capsys, argv, match):
    import re

    fill = {
        "llama": str(ckpt_dirs["llama"]),
        "pairs": str(pairs_file),
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "out"),
    }
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("workbench: error:"), err
    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_steer_with_directions_from_another_model(ckpt_dirs, pairs_file, tmp_path, capsys):
    out_dir = tmp_path / "dirs"
    assert (
        run(
            capsys,
            "directions",
            "--model",
            str(ckpt_dirs["gpt2"]),
            "--pairs",
            str(pairs_file),
            "--out",
            str(out_dir),
            "--backend",
            BACKEND,
        )[0]
        == 0
    )
    code, _, err = run(
        capsys,
        "steer",
        "--model",
        str(ckpt_dirs["llama"]),
        "--vector",
        str(out_dir),
        "--layer",
        "0",
        "--scale",
        "1",
        "--prompt",
        "a",
        "--backend",
        BACKEND,
    )
    assert code == 2 and "made for another model" in err


def test_existing_out_is_kept_unless_overwrite(ckpt_dirs, pairs_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run(
        capsys,
        "directions",
        "--model",
        str(ckpt_dirs["llama"]),
        "--pairs",
        str(pairs_file),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_demo_writes_a_complete_folder(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(
        capsys, "demo", "--out", str(out_dir), "--model", "toy-s", "--n-prompts", "6", "--backend", BACKEND
    )
    assert code == 0, err
    r = json.loads((out_dir / "results.json").read_text())
    assert set(r["attributes"]) == {"sentiment", "topic", "register", "language", "truth"}
    for attribute, grids in r["attributes"].items():
        for grid in grids:
            assert len(grid["cells"]) == 4 * 7  # layers x strengths
            assert {c["strength"] for c in grid["cells"]} == {0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0}
            ds = DirectionSet.load(out_dir / "directions" / f"{attribute}-{grid['kind']}")
            assert len(ds.directions) == 4 and ds.n_pairs == 200
        assert f"## {attribute}:" in out
    code, _, err = run(capsys, "demo", "--out", str(out_dir), "--model", "toy-s")
    assert code == 2 and "already exists" in err
    code, _, err = run(
        capsys, "toy", "train", "--size", "toy-s", "--out", str(tmp_path / "new"), "--p-collocation", "2"
    )
    assert code == 2 and "--p-collocation: takes a number in [0, 1]" in err and not (tmp_path / "new").exists()
    code, _, err = run(capsys, "toy", "train", "--size", "toy-s", "--out", str(tmp_path / "new"), "--p-catalogue", "-1")
    assert code == 2 and "--p-catalogue: takes a number in [0, 1]" in err and not (tmp_path / "new").exists()
    code, _, err = run(capsys, "toy", "train", "--size", "toy-s", "--out", str(tmp_path / "new"), "--embed-std", "0")
    assert code == 2 and "--embed-std: embed_std must be positive" in err and not (tmp_path / "new").exists()


def test_console_script_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "info", "--model", str(tmp_path / "nothing/")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_toy_commands(tmp_path, capsys):
    code, out, _ = run(capsys, "toy", "sample", "-n", "3", "--seed", "1")
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, out, _ = run(capsys, "toy", "cards")
    assert code == 0 and "| validation loss (nats/token) |" in out and out.count("| steer ") == 5
    code, _, err = run(capsys, "toy", "measure", "--model", str(tmp_path))
    assert code == 2 and "no card.json" in err
    (tmp_path / "toy-s").mkdir()
    code, _, err = run(capsys, "toy", "train", "--size", "toy-s", "--out", str(tmp_path / "toy-s"))
    assert code == 2 and "already exists" in err


@pytest.fixture
def llama_dirs(ckpt_dirs, pairs_file, tmp_path, capsys):
    out_dir = tmp_path / "dirs"
    assert (
        run(
            capsys,
            "directions",
            "--model",
            str(ckpt_dirs["llama"]),
            "--pairs",
            str(pairs_file),
            "--out",
            str(out_dir),
            "--backend",
            BACKEND,
        )[0]
        == 0
    )
    return out_dir


def test_export_every_format_with_parity_check_then_import(ckpt_dirs, llama_dirs, tmp_path, capsys):
    from workbench.export.spec import Spec

    llama = str(ckpt_dirs["llama"])
    base = ["export", "--vector", str(llama_dirs), "--layers", "1", "--scale", "8", "--backend", BACKEND]
    code, out, err = run(
        capsys,
        *base,
        "--format",
        "spec",
        "--out",
        str(tmp_path / "spec"),
        "--model",
        llama,
        "--check",
        "--prompt",
        "the cat is",
    )
    assert code == 0, err
    row = json.loads(out.splitlines()[-1])
    assert row["path"] == "apply_hf" and row["max_abs_diff"] < 5e-5 < row["effect"]
    code, out, err = run(
        capsys,
        *base,
        "--format",
        "hf-baked",
        "--out",
        str(tmp_path / "baked"),
        "--model",
        llama,
        "--dtype",
        "float32",
        "--check",
        "--prompt",
        "the cat is",
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["max_abs_diff"] < 5e-5
    code, out, err = run(capsys, *base, "--format", "gguf", "--out", str(tmp_path / "v.gguf"))
    assert code == 0, err
    code, out, err = run(
        capsys,
        "import",
        str(tmp_path / "v.gguf"),
        "--model",
        llama,
        "--out",
        str(tmp_path / "imp"),
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    a, b = Spec.load(tmp_path / "spec"), Spec.load(tmp_path / "imp")
    assert b.interventions[0].site == a.interventions[0].site
    assert (b.interventions[0].vector - 8 * a.interventions[0].vector).abs().max() < 1e-5


def test_export_check_gives_a_verdict(ckpt_dirs, llama_dirs, tmp_path, capsys, monkeypatch):
    from workbench.export import llamacpp, parity

    llama = str(ckpt_dirs["llama"])
    base = [
        "export",
        "--vector",
        str(llama_dirs),
        "--layers",
        "1",
        "--scale",
        "8",
        "--backend",
        BACKEND,
        "--model",
        llama,
        "--check",
    ]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat is\n\na big dog\n")
    code, out, err = run(capsys, *base, "--format", "spec", "--out", str(tmp_path / "a"), "--prompts", str(prompts))
    assert code == 0 and "check apply_hf: PASS" in out and json.loads(out.splitlines()[-1])["pass"], err
    code, out, err = run(capsys, *base, "--format", "spec", "--out", str(tmp_path / "b"))
    assert code != 0 and "--prompts FILE" in err  # no toy text for a user's model: the user's prompts are needed
    assert not (tmp_path / "b").exists()  # refused before anything was written
    real = parity.check
    monkeypatch.setattr(
        parity,
        "check",
        lambda *a, **k: [parity.ParityRow(r.path, r.effect / 2, r.effect, None, r.n_tokens) for r in real(*a, **k)],
    )
    code, out, err = run(capsys, *base, "--format", "spec", "--out", str(tmp_path / "c"), "--prompt", "the cat")
    assert code == 1 and "check apply_hf: FAIL" in out
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    code, out, err = run(capsys, *base, "--format", "gguf", "--out", str(tmp_path / "v.gguf"), "--prompt", "the cat")
    assert code == 0 and "check llama.cpp: SKIPPED" in out and "./dev test" in out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--format", "gguf", "--layers", "0", "--scale", "1"], "never steers block 0"),
        (["--format", "gguf", "--layers", "1", "--scale", "1", "--positions", "generated"], "every position"),
        (["--format", "hf-baked", "--layers", "1", "--scale", "1"], "needs --model"),
        (["--format", "spec", "--layers", "1"], "needs --layers .* and --scale"),
        (["--format", "spec", "--layers", "all", "--scale", "1"], "not an edit"),
        (["--format", "spec", "--layers", "5", "--scale", "1"], "no resid_post direction at layer 5"),
        (["--format", "tflite", "--layers", "1", "--scale", "1"], "invalid choice"),
    ],
)
def test_export_errors_leave_nothing(llama_dirs, tmp_path, capsys, extra, match):
    import re

    out = tmp_path / ("o.gguf" if "gguf" in extra else "o")
    code, _, err = run(capsys, "export", "--vector", str(llama_dirs), "--out", str(out), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_export_to_another_model_and_import_errors(ckpt_dirs, llama_dirs, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "export",
        "--vector",
        str(llama_dirs),
        "--layers",
        "1",
        "--scale",
        "1",
        "--format",
        "hf-baked",
        "--out",
        str(tmp_path / "b"),
        "--model",
        str(ckpt_dirs["gpt2"]),
        "--backend",
        BACKEND,
    )
    assert code == 2 and "made for another model" in err and not (tmp_path / "b").exists()
    code, _, err = run(
        capsys, "import", str(tmp_path / "none.gguf"), "--model", str(ckpt_dirs["llama"]), "--out", str(tmp_path / "i")
    )
    assert code == 2 and "does not exist" in err and not (tmp_path / "i").exists()


def test_analyze_commands_write_results_and_figures(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "analyze",
        "layer-sweep",
        "--model",
        "toy-s",
        "--attribute",
        "register",
        "--out",
        str(tmp_path / "sw"),
        "--layers",
        "1,3",
        "--strengths=-1,1",
        "--n-prompts",
        "4",
        "--n-pairs",
        "20",
        "--max-new-tokens",
        "6",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    r = json.loads((tmp_path / "sw" / "result.json").read_text())
    assert len(r["cells"]) == 4 and "best cell" in out
    assert {p.name for p in (tmp_path / "sw" / "figures").iterdir()} == {
        "figures.html",
        "layer_sweep_maps.json",
        "layer_sweep_kl.json",
        "layer_sweep_relative.json",
        "layer_sweep_reading.json",
    }
    code, out, err = run(
        capsys,
        "analyze",
        "heads",
        "--model",
        "toy-s",
        "--attribute",
        "topic",
        "--out",
        str(tmp_path / "hd"),
        "--n-pairs",
        "8",
        "--no-generate",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    r = json.loads((tmp_path / "hd" / "result.json").read_text())
    assert set(r["top"]) == {"direct", "patching", "attribution", "steering"} and "target_rate" not in r["steering"]
    assert (tmp_path / "hd" / "figures" / "heads_maps.json").is_file()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["layer-sweep", "--attribute", "mood"], "invalid choice"),
        (["layer-sweep", "--attribute", "topic", "--strengths", "1,x"], "--strengths: invalid value '1,x'"),
        (["layer-sweep", "--attribute", "topic", "--layers", "1-"], "--layers: invalid value '1-'"),
        (
            ["layer-sweep", "--attribute", "topic", "--strengths=-1,nan"],
            "--strengths: invalid value .*not a (finite )?number",
        ),
        (["layer-sweep", "--attribute", "topic", "--layers", "9"], "has 4 blocks"),
        (["heads", "--attribute", "topic", "--readout-layer", "7"], "readout_layer must be in 0..3"),
        (["heads", "--attribute", "topic", "--n-pairs", "0"], "--n-pairs must be >= 1"),
    ],
)
def test_analyze_errors_leave_nothing(tmp_path, capsys, argv, match):
    import re

    code, _, err = run(capsys, "analyze", *argv, "--model", "toy-s", "--out", str(tmp_path / "o"), "--n-prompts", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["sample-size", "--model", "toy-s", "--ns", "1,4", "--resamples", "1", "--pool", "20"], "saturation N"),
        (["distribution-shift", "--model", "toy-s"], "OOD/ID"),
        (["model-size", "--models", "toy-s"], "harm slopes"),
        (["adversarial", "--model", "toy-s", "--steps", "1", "--n-train", "2", "--n-heldout", "4"], "reversal rate"),
    ],
)
def test_robustness_commands(tmp_path, capsys, argv, expect):
    small = ["--n-prompts", "4"] if argv[0] != "adversarial" else []
    code, out, err = run(
        capsys,
        "analyze",
        *argv,
        "--attribute",
        "register",
        "--out",
        str(tmp_path / "o"),
        "--max-new-tokens",
        "4",
        "--backend",
        BACKEND,
        *small,
    )
    assert code == 0, err
    assert expect in out and (tmp_path / "o" / "result.json").is_file()
    assert (tmp_path / "o" / "figures" / "figures.html").is_file()


def test_composition_command(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "analyze",
        "composition",
        "--model",
        "toy-s",
        "--properties",
        "register",
        "--pairs",
        "",
        "--fixed-alphas",
        "1",
        "--n-icl",
        "4",
        "--n-test",
        "4",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "o"),
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    assert "dynamic" in out and (tmp_path / "o" / "figures" / "dac_tradeoff.json").is_file()
    code, _, err = run(
        capsys,
        "analyze",
        "composition",
        "--model",
        "toy-s",
        "--properties",
        "truth",
        "--pairs",
        "",
        "--out",
        str(tmp_path / "t"),
    )
    assert code == 2 and "truth is not composed" in err and not (tmp_path / "t").exists()


def test_tuning_command_writes_the_tuned_checkpoint(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "analyze",
        "tuning",
        "--model",
        "toy-s",
        "--out",
        str(tmp_path / "o"),
        "--n-train",
        "16",
        "--n-val",
        "8",
        "--n-eval",
        "8",
        "--max-steps",
        "2",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    assert (tmp_path / "o" / "tuned-model" / "model.safetensors").is_file() and "dual-loss tuned" in out
    assert (tmp_path / "o" / "result.json").is_file()


def test_bos_and_chat_template_flags_are_recorded(tmp_path, capsys):
    from workbench.export.spec import spec_from_directions
    from workbench.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "chat", "llama", n_layers=2, chat_template=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": p, "positive": "good", "negative": "bad"}) + "\n"
            for p in ("the cat is", "a dog is", "the sun is", "we are")
        )
    )
    code, out, err = run(
        capsys,
        "directions",
        "--model",
        str(folder),
        "--pairs",
        str(pairs),
        "--out",
        str(tmp_path / "d"),
        "--bos",
        "never",
        "--chat-template",
        "--backend",
        BACKEND,
    )
    assert code == 0, err
    ds = DirectionSet.load(tmp_path / "d")
    assert ds.tokenization == {"bos": "never", "chat_template": True}
    assert spec_from_directions(ds, 1, 1.0).provenance.tokenization == ds.tokenization
    code, out, err = run(capsys, "info", "--model", str(folder), "--bos", "always", "--backend", BACKEND)
    info = json.loads(out)
    assert info["tokenization"]["bos"] == "always" and info["self_check_max_logit_diff"] < 1e-4


def test_info_says_which_formats_hold_an_edit(tmp_path, capsys):
    from workbench.tiny import write_tiny_checkpoint

    for family, baked in (
        ("gemma2", "refused: Gemma2 normalises"),
        ("gpt-neox", "adds at block outputs"),
        ("opt", "adds at block outputs"),
    ):
        folder = write_tiny_checkpoint(tmp_path / family, family, n_layers=2, d_model=32)
        code, out, err = run(capsys, "info", "--model", str(folder), "--backend", "bridge")
        assert code == 0, err
        exports = json.loads(out)["exports"]
        assert exports["hf-baked"].startswith(baked)
        assert exports["gguf"].startswith("refused: llama.cpp's converter does not support OPT") == (family == "opt")
