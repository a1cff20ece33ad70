"""Dynamic (DAC) steering with one property vs single-vector steered generation, per token (target <= 1.6x).

Both sides generate 32 tokens greedily for 8 prompts with a KV cache. Single-vector: ``workbench.generate`` with an
``AddDirection`` at one block's output on every token. DAC: ``generate_composed`` with one property's step vectors
at every layer's ``hook_z``; ``fixed`` shows the cost of the step-wise application alone, ``dynamic`` adds the
batched unsteered + probe pass per step; "lagged" runs unsteered, probe and steered rows in one forward per step
(alpha one step late).
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import SIZE, bench_model, header, interleaved  # noqa: E402

from workbench.composition import StepVectors, generate_composed  # noqa: E402
from workbench.generate import generate  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402

N_PROMPTS, NEW = 8, 32


def main() -> None:
    model = bench_model()
    g = torch.Generator().manual_seed(0)
    words = "the a cat dog bird fish car bus tree house sun moon sky sea big small red blue green very".split()
    prompts = [" ".join(words[int(i)] for i in torch.randint(len(words), (12,), generator=g)) for _ in range(N_PROMPTS)]
    d, n = SIZE["d_model"], SIZE["n_layers"]
    vec = StepVectors(0.05 * torch.randn(NEW, n, d, generator=g))
    add = AddDirection(HookSite(n // 2), torch.randn(d, generator=g), 2.0)

    def single():
        generate(model, prompts, add, max_new_tokens=NEW, temperature=0.0, stop_at_eos=False)

    def fixed():
        generate_composed(model, prompts, [vec], "fixed", alpha=1.0, max_new_tokens=NEW)

    def dynamic():
        generate_composed(model, prompts, [vec], "dynamic", max_new_tokens=NEW)

    def lagged():
        generate_composed(model, prompts, [vec], "dynamic", max_new_tokens=NEW, timing="lagged")

    t = interleaved({"single": single, "fixed": fixed, "dynamic": dynamic, "lagged": lagged}, reps=5)
    header(f"DAC generation, {N_PROMPTS} prompts x {NEW} tokens (greedy, KV cache)", model)
    for k in ("single", "fixed", "dynamic", "lagged"):
        print(f"{k:<8} {t[k] * 1000:8.1f} ms  ({N_PROMPTS * NEW / t[k]:7.1f} tok/s)")
    print(
        f"ratio dynamic/single = {t['dynamic'] / t['single']:.3f}x exact, {t['lagged'] / t['single']:.3f}x lagged "
        f"(target <= 1.6x); fixed/single = {t['fixed'] / t['single']:.3f}x"
    )


if __name__ == "__main__":
    main()
