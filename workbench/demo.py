"""``workbench demo``: the pipeline end to end on the embedded default model (toy-m), written to one folder.

For every toy attribute: minimal contrast pairs from the toy world, mean-difference directions at every layer
(with held-out probe accuracy), a small layer x strength sweep of steered, sampled continuations from prompts with
the opposite value, scored exactly (target rate, grammaticality), and the best cell under the grammar floor.
Directions are saved in the workbench format; ``results.json`` holds every number and ``summary.md`` reads them.
The best cell of each attribute is exported (spec, llama.cpp control vector where expressible, baked checkpoint
check) and its deployment parity measured (``parity.json``); the demo ends by writing ``report.html`` /
``report.md`` (``workbench.report``) from all of it, with the model's card.
"""

__all__ = ["run_demo"]

import random
import shutil
import time
from pathlib import Path

from workbench import models
from workbench.errors import WorkbenchError
from workbench.io import atomic_dir, write_json
from workbench.report import build_report
from workbench.toy.measure import GRAMMAR_FLOOR, SITES, directions_for, steering_grid
from workbench.toy.prompts import STEER_TARGETS


def run_demo(
    out: "str | Path",
    model: str = "toy-m",
    backend: "str | None" = None,
    seed: int = 0,
    n_prompts: int = 48,
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    progress: bool = True,
) -> Path:
    """Run the demo on ``model`` into ``out`` (replaced atomically) and return it."""
    from tqdm.auto import tqdm

    out = Path(out)
    t0 = time.perf_counter()
    m = models.load(model, backend=backend)
    fp = models.fingerprint(m)
    results: dict = {
        "kind": "demo",
        "model": model,
        "backend": models.backend_of(m),
        "fingerprint": fp.to_dict(),
        "grammar_floor": GRAMMAR_FLOOR,
        "attributes": {},
    }
    with atomic_dir(out) as tmp:
        for attribute in tqdm(list(STEER_TARGETS), desc="demo: attributes", disable=not progress):
            source, target = STEER_TARGETS[attribute]
            grids = []
            for kind, position in SITES[attribute]:
                ds = directions_for(m, attribute, source, target, n_pairs=200, seed=seed, kind=kind, position=position)
                ds.save(tmp / "directions" / f"{attribute}-{kind}")
                grids.append(
                    steering_grid(
                        m,
                        attribute,
                        kind=kind,
                        position=position,
                        strengths=strengths,
                        n_prompts=n_prompts,
                        max_new_tokens=24,
                        seed=seed,
                        directions=ds,
                    )
                )
            results["attributes"][attribute] = grids
        results["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(tmp / "results.json", results)
        (tmp / "summary.md").write_text(_summary(results))
        _export_best(m, results, tmp, seed)
        card = Path(models.source_of(m) or "") / "card.json"
        if card.is_file():
            shutil.copy(card, tmp / "card.json")
        build_report(tmp, title=f"workbench demo: {model}")
    return out


def _export_best(m, results: dict, folder: Path, seed: int) -> None:
    """Export every attribute's best block-output cell and measure parity on each deployment path available."""
    from workbench.directions import DirectionSet
    from workbench.export import llamacpp
    from workbench.export.gguf import cvec_block, write_gguf
    from workbench.export.parity import check
    from workbench.export.spec import spec_from_directions
    from workbench.toy.prompts import prompts, random_attributes

    texts = [p.text for p in prompts(random_attributes(random.Random(seed)), 4, seed=seed)]
    for attribute, grids in results["attributes"].items():
        g = grids[0]
        b = g["best"]
        exported = folder / "exports" / attribute
        if b is None or b["strength"] <= 0:  # nothing to deploy
            write_json(
                exported / "parity.json",
                {
                    "kind": "parity",
                    "spec": f"{attribute}: none",
                    "rows": [],
                    "refused": [
                        f"no steering cell passes the grammar floor {results['grammar_floor']}, so there is no "
                        f"edit to export"
                    ],
                },
            )
            continue
        ds = DirectionSet.load(folder / "directions" / f"{attribute}-{g['kind']}")
        spec = spec_from_directions(ds, b["layer"], b["strength"], kind=g["kind"], source=f"demo:{attribute}")
        spec.save(exported / "spec")
        paths, refused = ["apply_hf", "baked"], []
        try:
            cvec_block(spec.interventions[0], spec.fingerprint.n_layers)
            write_gguf(spec, exported / "control.gguf")
            if llamacpp.available():
                paths.append("llama.cpp")
            else:
                refused.append("llama.cpp not installed here (./dev test installs it)")
        except WorkbenchError as e:
            refused.append(f"gguf: {e}")
        rows = check(m, spec, texts, paths=tuple(paths))
        write_json(
            exported / "parity.json",
            {
                "kind": "parity",
                "spec": f"{attribute}: {spec.interventions[0].site.name} x{b['strength']:g}",
                "rows": [r.to_dict() for r in rows],
                "refused": refused,
            },
        )


def _summary(r: dict) -> str:
    lines = [
        f"# workbench demo: {r['model']} ({r['backend']} backend)",
        "",
        f"Toy world, exact evaluation. Per attribute: mean-difference directions at every layer's output from "
        f"200 minimal pairs; steered sampled continuations of prompts with the opposite value; cells are target "
        f"rate / grammaticality. Best cell: highest target rate with grammaticality >= {r['grammar_floor']} that "
        f"beats the unsteered rate. Strength 1 = the mean pair difference. Took {r['seconds']:.0f} s.",
    ]
    for g in (g for grids in r["attributes"].values() for g in grids):
        strengths = sorted({c["strength"] for c in g["cells"]})
        layers = sorted({c["layer"] for c in g["cells"]})
        cell = {(c["layer"], c["strength"]): c for c in g["cells"]}
        lines += [
            "",
            f"## {g['attribute']}: {g['source']} -> {g['target']} at {g['kind']} (contrast at the "
            f"{g['position']} token; {g['n_prompts']} prompts per cell)",
            "",
            "| layer | probe acc | " + " | ".join(f"x{s:g}" for s in strengths) + " |",
            "|---|---|" + "---|" * len(strengths),
        ]
        for layer in layers:
            probe = g["probe_accuracy"].get(layer)
            lines.append(
                f"| {layer} | {'n/a' if probe is None else f'{probe:.2f}'} | "
                + " | ".join(
                    f"{cell[layer, s]['target_rate']:.2f} / {cell[layer, s]['grammaticality']:.2f}" for s in strengths
                )
                + " |"
            )
        b = g["best"]
        lines += [
            "",
            "best: no steering cell passes (none beats the unsteered rate within the grammar floor)"
            if b is None or b["strength"] <= 0
            else f"best: layer {b['layer']}, x{b['strength']:g}: target {b['target_rate']:.2f} at grammaticality "
            f'{b["grammaticality"]:.2f}; e.g. "{b["example"]}"',
        ]
    return "\n".join(lines) + "\n"
