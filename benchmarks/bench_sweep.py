"""A layer x strength sweep, with and without its fluency costs, against its floor: one batched generation per
layer (target <= 1.2x).

    .venv/bin/python benchmarks/bench_sweep.py [--sizes toy-m,d1024x8,d1536x12] [--prompts 32] [--new 24] \
        [--strengths 0,1,2,3]

The sweep is the whole study call ``analyses.layer_sweep.run`` on precomputed directions: the unsteered pass,
residual norms, then per layer one generation of every strength in one batch and, per cell, the attribute score,
the KL to unsteered and the continuations' perplexity (``fluency=False``: neither). The floor is the generations
alone: per layer one ``generate_at_strengths`` call over the same prompts and strengths. Interleaved repeats,
medians.
"""

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import SIZES, checkpoint, interleaved  # noqa: E402

from analyses import layer_sweep  # noqa: E402
from workbench import models  # noqa: E402
from workbench.generate import generate_at_strengths  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.toy.measure import directions_for, steer_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--strengths", default=None, help="comma-separated (default: the study's 11)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("## Layer x strength sweep vs one batched generation per layer")
    print()
    print("| size | layers x strengths | sweep (s) | fluency off (s) | generations alone (s) | ratios | target |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        model = models.load(checkpoint(size))
        chosen = {} if args.strengths is None else {"strengths": tuple(float(x) for x in args.strengths.split(","))}
        cfg = layer_sweep.Config(n_prompts=args.prompts, max_new_tokens=args.new, n_pairs=64, temperature=0.0, **chosen)
        ds = directions_for(model, cfg.attribute, cfg.source, cfg.target, cfg.n_pairs, cfg.seed, cfg.kind, cfg.position)
        texts = [p.text for p in steer_prompts(cfg.attribute, cfg.source, cfg.n_prompts, cfg.seed + 1)]
        layers = range(model.cfg.n_layers)

        lean = replace(cfg, fluency=False)

        def sweep():
            layer_sweep.run(model, cfg, directions=ds, progress=False)

        def sweep_lean():
            layer_sweep.run(model, lean, directions=ds, progress=False)

        def floor():
            for layer in layers:
                d = ds.at(layer, cfg.kind)
                iv = AddDirection(d.site, d.vector, 1.0)
                generate_at_strengths(
                    model, texts, iv, list(cfg.strengths), max_new_tokens=args.new, temperature=0.0, seed=cfg.seed
                )

        t = interleaved({"sweep": sweep, "lean": sweep_lean, "floor": floor}, reps=args.reps)
        cells = f"{model.cfg.n_layers} x {len(cfg.strengths)} ({args.prompts} prompts, {args.new} tokens)"
        ratios = f"{t['sweep'] / t['floor']:.2f}x / {t['lean'] / t['floor']:.2f}x"
        print(f"| {size} | {cells} | {t['sweep']:.2f} | {t['lean']:.2f} | {t['floor']:.2f} | {ratios} | <= 1.2x |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
