"""Bad command lines: every one is a single clear error line (or a correct run), never an "internal error"."""

import json
import random

import pytest

from tests.conftest import BACKEND
from workbench.cli import main

HOSTILE = [
    "", "--", "-", "-1", "0", "1-", "2,2", "3-1", "1e308", "-1e308", "nan", "inf", "-inf", "1.5", "True", "٢",
    "1,x", "all", "from:", "from:x", "\udcff", "a" * 5000, "/", "/dev/null", "{", "999999999999999999999",
]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pairs = root / "pairs.jsonl"
    rows = [{"prompt": f"{s} is", "positive": "good", "negative": "bad"} for s in ("the cat", "a dog", "the sun", "we")]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = str(root / "d")
    assert main(["directions", "--model", "toy-s", "--pairs", str(pairs), "--out", d, "--backend", BACKEND]) == 0
    edit = ["--layers", "1", "--scale", "2"]
    assert main(["export", "--vector", d, "--format", "spec", "--out", str(root / "spec"), *edit]) == 0
    assert main(["export", "--vector", d, "--format", "gguf", "--out", str(root / "cv.gguf"), *edit]) == 0
    return root, pairs


def _commands(root, pairs, out):
    d = str(root / "d")
    return [
        ["info", "--model", "toy-s"],
        ["directions", "--model", "toy-s", "--pairs", str(pairs), "--out", out, "--layers", "1", "--batch-size", "2"],
        ["steer", "--model", "toy-s", "--vector", d, "--layer", "1", "--scale", "1", "--prompt", "the cat",
         "--max-new-tokens", "2", "--positions", "all", "--temperature", "0"],
        ["export", "--vector", d, "--format", "spec", "--out", out, "--layers", "1", "--scale", "1"],
        ["export", "--vector", str(root / "spec"), "--format", "gguf", "--out", out + ".gguf"],
        ["import", str(root / "cv.gguf"), "--model", "toy-s", "--out", out],
        ["analyze", "layer-sweep", "--model", "toy-s", "--out", out, "--layers", "1", "--strengths", "0,1",
         "--n-prompts", "2", "--n-pairs", "8", "--max-new-tokens", "2", "--attribute", "register"],
        ["report", str(root / "missing"), "--out", out],
        ["toy", "sample", "-n", "2", "--seed", "1"],
    ]  # fmt: skip


def _mutate(argv: "list[str]", rng: random.Random) -> "list[str]":
    argv = list(argv)
    values = [i for i, a in enumerate(argv) if i > 0 and not a.startswith("--") and argv[i - 1].startswith("-")]
    choice = rng.random()
    if choice < 0.7 and values:
        argv[rng.choice(values)] = rng.choice(HOSTILE)
    elif choice < 0.85:
        flags = [i for i, a in enumerate(argv) if a.startswith("--")]
        if flags:
            i = rng.choice(flags)
            del argv[i : i + (2 if i + 1 < len(argv) and not argv[i + 1].startswith("--") else 1)]
    else:
        argv.insert(rng.randrange(1, len(argv) + 1), rng.choice(["--unknown", "--scale", "--layers", "x"]))
    return argv


def test_no_bad_command_line_reaches_the_internal_error_line(made, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_BACKEND", BACKEND)
    monkeypatch.chdir(tmp_path)  # a mutated --out is a relative path: keep what it writes in here
    root, pairs = made
    rng = random.Random(0)
    seen = {"ok": 0, "refused": 0}
    for k in range(120):
        base = _commands(root, pairs, str(tmp_path / f"o{k}"))
        argv = _mutate(rng.choice(base), rng)
        code = main(argv)
        out, err = capsys.readouterr()
        assert "internal error" not in err and "Traceback" not in err, (argv, err)
        if code == 0:
            seen["ok"] += 1
        else:
            seen["refused"] += 1
            assert code in (1, 2) and len(err.strip().splitlines()) == 1, (argv, err)
    assert seen["refused"] >= 60, seen


@pytest.mark.parametrize(
    "argv, match",
    [
        (["export", "--format", "spec", "--layers", "1-", "--scale", "1"], "--layers: takes blocks"),
        (["export", "--format", "spec", "--layers", "2,2", "--scale", "1"], "block 2 is named twice"),
        (["export", "--format", "spec", "--layers", "1", "--scale", "1e308"], r"\|scale\| <= 10000"),
        (["export", "--format", "spec", "--layers", "1", "--scale", "nan"], "finite number"),
        (["export", "--format", "spec", "--layers", "٢", "--scale", "1"], "--layers: takes blocks"),
    ],
)
def test_export_values_are_refused_before_anything_is_written(made, tmp_path, capsys, argv, match):
    import re

    root, _ = made
    code = main([*argv, "--vector", str(root / "d"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err) and not (tmp_path / "o").exists(), err


def test_typed_values_are_refused_with_their_flag(made, capsys):
    root, _ = made
    d = str(root / "d")
    for bad, match in [
        (["--temperature", "nan"], "--temperature: takes a finite number"),
        (["--temperature", "-1"], "--temperature: takes 0 (greedy) or a temperature in [0.001, 100]"),
        (["--prompt", "a\udcff"], "--prompt: is not valid UTF-8"),
        (["--max-new-tokens", "0"], "--max-new-tokens: takes a whole number in 1..1000000"),
        (["--positions", "from:x"], "--positions: positions must be"),
    ]:
        argv = ["steer", "--model", "toy-s", "--vector", d, "--layer", "1", "--scale", "1", "--prompt", "a", *bad]
        assert main(argv) == 2
        assert match in capsys.readouterr().err or pytest.fail(f"{bad}: {match}")


def test_prompts_file_that_is_a_directory_is_named(made, tmp_path, capsys):
    root, _ = made
    code = main(["export", "--vector", str(root / "spec"), "--format", "spec", "--out", str(tmp_path / "o"),
                 "--model", "toy-s", "--check", "--prompts", str(tmp_path), "--backend", BACKEND])  # fmt: skip
    assert code == 2 and "is a directory" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_block_named_twice_is_refused_by_the_library_too(made):
    from workbench.directions import DirectionSet
    from workbench.errors import WorkbenchError
    from workbench.export.spec import spec_from_directions

    root, _ = made
    with pytest.raises(WorkbenchError, match="layer 1 is named twice"):
        spec_from_directions(DirectionSet.load(root / "d"), [1, 2, 1], 1.0)


def test_runs_without_a_home_directory(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["info", "--model", "toy-s", "--backend", BACKEND]) == 0, capsys.readouterr().err
    monkeypatch.delenv("WORKBENCH_CACHE_DIR")
    code = main(["info", "--model", "toy-s", "--backend", BACKEND])
    err = capsys.readouterr().err
    assert "internal error" not in err and code in (0, 2), err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--temperature", "1e-300"], "--temperature: takes 0 (greedy) or a temperature in"),
        (["--scale", "٢"], "--scale: takes a number like"),
        (["--scale", "1_0"], "--scale: takes a number like"),
        (["--positions", "from:٣"], "--positions: positions must be"),
    ],
)
def test_numbers_are_ascii_and_in_range(made, capsys, argv, match):
    root, _ = made
    base = ["steer", "--model", "toy-s", "--vector", str(root / "d"), "--layer", "1", "--scale", "1", "--prompt", "a"]
    assert main([*base, *argv]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--strengths", "1,1"], "--strengths: invalid value '1,1' (1 is listed twice)"),
        (["--layers=-1"], "--layers must name blocks >= 0"),
        (["--strengths=-1e5,1"], "|s| <= 10000"),
        (["--kind", "bogus"], "--kind must be one of"),
        (["--temperature", "1e308"], "--temperature must be in [0, 100]"),
        (["--kl-bound=-1"], "--kl-bound must be >= 0"),
    ],
)
def test_study_flags_are_refused_before_a_model_loads(tmp_path, capsys, argv, match):
    code = main(["analyze", "layer-sweep", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "does not exist" not in err, err


def test_an_edit_past_float32_is_refused():
    import torch

    from workbench.errors import WorkbenchError
    from workbench.interventions import AddDirection
    from workbench.sites import HookSite

    with pytest.raises(WorkbenchError, match="past what float32 holds"):
        AddDirection(HookSite(1), torch.full((8,), 3e37), 1e4)
