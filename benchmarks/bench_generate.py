"""Steered generation (every token steered, KV cache) vs unsteered generation: tokens/s ratio (target >= 0.95x)."""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import bench_model, header, interleaved  # noqa: E402

from workbench.generate import generate  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402

PROMPTS = [
    "the cat sees the big dog and",
    "a bird",
    "the sun is very",
    "we love the blue sea but the moon is",
    "this house",
    "the small red car",
    "they like",
    "you eat a fish",
]
NEW = 32


def main() -> None:
    model = bench_model()
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    steer = AddDirection(HookSite(model.cfg.n_layers // 2), v, 2.0)
    kw = dict(max_new_tokens=NEW, temperature=1.0, seed=0, stop_at_eos=False)

    t = interleaved(
        {
            "unsteered": lambda: generate(model, PROMPTS, **kw),
            "steered": lambda: generate(model, PROMPTS, steer, **kw),
            "unsteered_tl": lambda: model.generate(PROMPTS[0], max_new_tokens=NEW, verbose=False),
        }
    )
    n = len(PROMPTS) * NEW
    header(f"generation, {len(PROMPTS)} prompts x {NEW} new tokens, KV cache", model)
    print(f"unsteered   {n / t['unsteered']:8.1f} tok/s")
    print(f"steered     {n / t['steered']:8.1f} tok/s")
    print(f"(reference: TransformerLens generate, 1 prompt: {NEW / t['unsteered_tl']:.1f} tok/s)")
    print(f"ratio steered/unsteered = {t['unsteered'] / t['steered']:.3f}x tokens/s  (target >= 0.95x)")


if __name__ == "__main__":
    main()
