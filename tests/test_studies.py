"""The study registry: a study is one file, its flags come from its Config, its results load back typed, and the
core never imports a study."""

import argparse
import ast
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from workbench import studies
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.report import build_report
from workbench.studies import add_config_flags, config_from_flags, field_docs, format_default, load_result

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = '''
"""An example study in one file: how many tokens a text is, repeated."""

from dataclasses import dataclass

from workbench.plotting import bars
from workbench.report.sections import Section
from workbench.studies import Context, Study, StudyResult, register
from workbench.tokens import tokenize


@dataclass(frozen=True)
class Config:
    text: str = "the cat is good"
    """Text to tokenise."""
    repeat: int = 2
    """Copies of the text, joined by spaces."""


@dataclass(frozen=True)
class Result(StudyResult):
    KIND = "example_tokens"
    config: dict
    ids: list


def run(ctx: Context, cfg: Config) -> Result:
    ids = tokenize(ctx.model(), " ".join([cfg.text] * cfg.repeat))
    return Result({"text": cfg.text, "repeat": cfg.repeat}, list(ids))


def plot(r: dict) -> dict:
    return {"example_ids": bars({"ids": (list(range(len(r["ids"]))), r["ids"], None)}, title="ids", y_title="id")}


def section(r: dict) -> Section:
    return Section(Result.KIND, "Example", f"{len(r['ids'])} tokens for {r['config']['repeat']} copies.", plot(r))


def summary(r: Result) -> str:
    return f"example: {len(r.ids)} tokens"


register(Study("token-count", "count tokens (example)", Config, Result, run, plot, section, summary))
'''


@pytest.fixture
def example_study(tmp_path, monkeypatch):
    (tmp_path / "example_study.py").write_text(EXAMPLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WORKBENCH_STUDIES", "example_study")
    studies.discover()
    return studies.get("token-count")


def test_a_study_in_one_file_gets_a_command_a_typed_result_and_a_report_section(example_study, tmp_path, capsys):
    from workbench import models
    from workbench.tokens import tokenize

    out = tmp_path / "o"
    code = main(
        [
            "analyze",
            "token-count",
            "--model",
            "toy-s",
            "--backend",
            BACKEND,
            "--out",
            str(out),
            "--text",
            "a dog",
            "--repeat",
            "3",
        ]
    )
    printed, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((out / "result.json").read_text())
    assert data["kind"] == "example_tokens" and data["schema_version"] == 1
    expected = tokenize(models.load("toy-s", backend=BACKEND), "a dog a dog a dog")
    assert data["ids"] == list(expected) and f"example: {len(expected)} tokens" in printed
    typed = load_result(out / "result.json")
    assert isinstance(typed, example_study.result) and typed.ids == data["ids"]
    assert (out / "figures" / "example_ids.json").is_file()
    _, md = build_report(out)
    assert f"{len(expected)} tokens for 3 copies." in md.read_text()


def test_every_flag_is_its_config_field_with_the_same_default():
    assert {s.name for s in studies.studies()} >= {
        "layer-sweep",
        "heads",
        "spectral",
        "sample-size",
        "distribution-shift",
        "model-size",
        "adversarial",
        "composition",
        "tuning",
    }
    for study in studies.studies():
        parser = argparse.ArgumentParser()
        add_config_flags(parser, study.config)
        docs = field_docs(study.config)
        fields = [f for f in dataclasses.fields(study.config) if f.init]
        assert all(docs.get(f.name) for f in fields), (study.name, [f.name for f in fields if not docs.get(f.name)])
        assert config_from_flags(study.config, parser.parse_args([])) == study.config(), study.name
        for f in fields:  # the default as the help writes it parses back to the default
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if default is None and "none" not in f.metadata:
                continue  # None is the flag left out
            if isinstance(default, bool):
                argv = [f"--{'' if default else 'no-'}{f.name.replace('_', '-')}"]
            else:
                argv = [f"--{f.name.replace('_', '-')}={format_default(default, f.metadata.get('none'))}"]
            parsed = config_from_flags(study.config, parser.parse_args(argv))
            assert parsed == study.config(), (study.name, f.name, argv)
        page = (
            subprocess.run(
                [sys.executable, "-m", "workbench.cli", "analyze", study.name, "--help"],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if study.name == "layer-sweep"
            else None
        )
        if page is not None:
            assert page.returncode == 0 and all(f"--{f.name.replace('_', '-')}" in page.stdout for f in fields)


def test_flag_values_parse_as_their_field_types():
    ls = studies.get("layer-sweep")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ls.config)
    cfg = config_from_flags(
        ls.config,
        parser.parse_args(["--layers", "1-3,5", "--strengths=-1,0.5", "--attribute", "topic", "--kl-bound", "0.2"]),
    )
    assert cfg.layers == (1, 2, 3, 5) and cfg.strengths == (-1.0, 0.5) and cfg.kl_bound == 0.2
    assert config_from_flags(ls.config, parser.parse_args(["--layers", "all"])).layers is None
    for bad in (["--layers", "1-"], ["--layers", "3-1"], ["--strengths", "1,x"], ["--n-prompts", "2.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(WorkbenchError, match="--n-prompts must be >= 1"):
        config_from_flags(ls.config, parser.parse_args(["--n-prompts", "0"]))
    comp = studies.get("composition")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, comp.config)
    cfg = config_from_flags(
        comp.config, parser.parse_args(["--pairs", "language+register", "--properties", "language,register"])
    )
    assert cfg.pairs == (("language", "register"),)
    spectral = studies.get("spectral")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, spectral.config)
    assert config_from_flags(spectral.config, parser.parse_args(["--layers", "2,3", "--no-center"])).layers == (2, 3)
    assert config_from_flags(spectral.config, parser.parse_args(["--layers", "last-half"])).layers == "last-half"


def test_committed_results_load_back_typed_and_bad_ones_are_refused():
    files = [p for p in (ROOT / "results").rglob("*.json") if "figures" not in p.parts]
    loaded = 0
    for p in files:
        data = json.loads(p.read_text())
        if isinstance(data, dict) and data.get("kind") in {s.kind for s in studies.studies()}:
            r = load_result(p)
            assert type(r).__name__ == "Result" and r.to_dict() == data, p
            loaded += 1
    assert loaded >= 50
    data = json.loads((ROOT / "results/sensitivity/toy-m-sentiment-layer_sweep.json").read_text())
    with pytest.raises(WorkbenchError, match="schema_version 2 is not one this workbench reads"):
        load_result({**data, "schema_version": 2})
    with pytest.raises(WorkbenchError, match="lacks cells"):
        load_result({k: v for k, v in data.items() if k != "cells"})
    with pytest.raises(WorkbenchError, match="not 'heads'"):
        studies.get("heads").result.from_dict(data)
    with pytest.raises(WorkbenchError, match="no study 'nope' is installed"):
        load_result({**data, "kind": "nope"})
    with pytest.raises(WorkbenchError, match="no study 'kind'"):
        load_result({"cells": []})


def _imports(path: Path) -> "set[str]":
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_the_core_never_imports_a_study_and_runs_without_them():
    for path in (ROOT / "workbench").rglob("*.py"):
        bad = {m for m in _imports(path) if m == "analyses" or m.startswith("analyses.")}
        assert not bad, (path, bad)
    models_imports = _imports(ROOT / "workbench" / "models.py")
    assert not any(m == "workbench.toy" or m.startswith("workbench.toy.") for m in models_imports)
    code = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "analyses" or name.startswith("analyses."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Block())
        import workbench, workbench.models, workbench.report, workbench.export.spec
        from workbench import studies
        from workbench.cli import main
        assert studies.studies() == [], studies.studies()
        assert "workbench.toy" not in sys.modules, "loading the core imported the toy package"
        assert main(["analyze", "--help"]) == 0
        assert not any(m == "analyses" or m.startswith("analyses.") for m in sys.modules)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
    assert "no study is installed" in r.stdout


def test_a_clashing_or_malformed_study_is_refused(example_study):
    with pytest.raises(WorkbenchError, match="Config and Result must be dataclasses"):
        dataclasses.replace(example_study, config=type("Config", (), {"__module__": "elsewhere"}))
    clash = dataclasses.make_dataclass("Config", [("n", int, 1)], frozen=True, namespace={"__module__": "elsewhere"})
    with pytest.raises(WorkbenchError, match="clashes with 'token-count'"):
        studies.register(dataclasses.replace(example_study, config=clash))

    @dataclasses.dataclass(frozen=True)
    class Config:
        out: str = "x"

    with pytest.raises(WorkbenchError, match="take a flag every analyze command owns"):
        dataclasses.replace(example_study, config=Config)


def test_flag_parsing_refuses_what_it_cannot_express():
    comp = studies.get("composition")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, comp.config)
    for bad in (["--pairs", "language"], ["--pairs", "language+sentiment+register"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert config_from_flags(comp.config, parser.parse_args(["--pairs", "", "--properties", "register"])).pairs == ()
    ls = studies.get("layer-sweep")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, ls.config)
    with pytest.raises(WorkbenchError, match="--layers must name blocks >= 0"):
        config_from_flags(ls.config, parser.parse_args(["--layers="]))

    @dataclasses.dataclass(frozen=True)
    class Odd:
        where: Path = Path(".")
        """A path: no command-line form."""

    with pytest.raises(WorkbenchError, match="has no command-line form"):
        add_config_flags(argparse.ArgumentParser(), Odd)

    @dataclasses.dataclass(frozen=True)
    class Percent:
        share: float = 0.5
        """Share of rows, in % of the batch."""

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Percent)
    assert "in % of the batch" in parser.format_help()


def test_one_module_registers_several_studies_and_a_context_loads_each_model_once(example_study):
    twin = dataclasses.replace(
        example_study,
        name="token-count-2",
        result=type("Twin", (example_study.result,), {"KIND": "example_tokens_2", "__module__": "example_study"}),
    )
    studies.register(twin)
    assert {"token-count", "token-count-2"} <= {s.name for s in studies.studies()}
    loads = []
    ctx = studies.Context("a", lambda name: loads.append(name) or object(), Path("."))
    assert ctx.model() is ctx.get("a") and ctx.get("b") is ctx.get("b") and loads == ["a", "b"]
    for reserved in ("study", "func", "command", "analysis"):
        bad = dataclasses.make_dataclass("Config", [(reserved, int, 1)], frozen=True)
        with pytest.raises(WorkbenchError, match="take a flag every analyze command owns"):
            dataclasses.replace(example_study, config=bad)
