"""Fuzz every loader with many mutated inputs and print the outcome table (benchmarks/RESULTS.md records it).

    .venv/bin/python benchmarks/fuzz_loaders.py [--n 10000] [--seed 1]

Each harness (``tests/fuzzing/``) writes mutated files of one format, loads each with the workbench's loader and
classifies the outcome: accepted and valid, refused with a WorkbenchError, a raw exception (a bug), or a silent
acceptance (accepted although the mutation changed what the file means: a bug). The suite runs the same
harnesses with a few hundred inputs each.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing import artifacts, gguf, pairs  # noqa: E402

HARNESSES = {
    "pairs file": pairs.run,
    "spec folder": artifacts.run_spec,
    "directions folder": artifacts.run_directions,
    "GGUF control vector": gguf.run,
}
#: outcome columns: the harnesses' own kinds (bugs last); a harness may add kinds of its own
KINDS = ("accepted_valid", "accepted_unverifiable", "refused", "refused_valid", "raw_exception", "silent_acceptance")
BUGS = ("refused_valid", "raw_exception", "silent_acceptance")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="mutated inputs per loader")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(f"## Loader fuzzing: {args.n} mutated inputs per loader, seed {args.seed}")
    print()
    print(
        "| loader | inputs | accepted (valid) | accepted, unverifiable (foreign, no checksum) "
        "| refused (WorkbenchError) | valid but refused | raw exceptions | silent acceptances | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for name, run in HARNESSES.items():
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            r = run(args.n, args.seed, Path(work))
        counts = [r.get(k, 0) for k in KINDS]
        bad += sum(r.get(k, 0) for k in BUGS)
        print(f"| {name} | {sum(counts)} | " + " | ".join(map(str, counts)) + f" | {time.perf_counter() - t0:.0f} |")
        for kind in BUGS:
            for example in (r.get("examples") or {}).get(kind, [])[:3]:
                print(f"  {kind}: {example}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
