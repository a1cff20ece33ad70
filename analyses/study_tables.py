"""Markdown tables of a study, rebuilt from its saved ``result.json`` files by the study's own ``table``.

    .venv/bin/python -m analyses.study_tables spectral results/spectral/toy-m results/spectral/toy-l
    .venv/bin/python -m analyses.study_tables composition results/composition/toy-m
    .venv/bin/python -m analyses.study_tables tuning results/tuning/toy-m

Prints the tables that open ``results/{spectral,composition,tuning}/SUMMARY.md``; each SUMMARY's "What this shows"
is written by hand below them. Reading only the JSON, so a table never drifts from the numbers it reports.
"""

import argparse
from pathlib import Path

from workbench import studies
from workbench.io import read_json

__all__ = ["markdown", "main", "with_tables"]


def with_tables() -> "list[str]":
    """The registered studies that have tables."""
    return [s.kind for s in studies.studies() if s.table is not None]


def markdown(study: str, results: "list[dict]") -> str:
    """The tables of ``study`` (a result kind or command name) over ``results``."""
    s = studies.get(study)
    if s.table is None:
        raise ValueError(f"study {s.name} has no tables.")
    return s.table(results)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=with_tables())
    ap.add_argument("folders", nargs="+", help="study output folders, each holding result.json")
    args = ap.parse_args(argv)
    results = []
    for folder in args.folders:
        path = Path(folder) / "result.json"
        if not path.is_file():
            ap.error(
                f"{path} does not exist; run `workbench analyze {studies.get(args.study).name} --out {folder}` first."
            )
        results.append(read_json(path))
    try:
        print(markdown(args.study, results), end="")
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
