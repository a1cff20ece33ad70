"""vLLM throughput of a baked checkpoint vs its unbaked base (same prompts; target 1.00x), and vs the workbench's own
steered generation at the same batch.

The edit is an add at the middle block's output (baked: MLP biases switched on); every run is greedy, EOS
ignored, so each row generates exactly ``--new-tokens`` tokens. vLLM runs in one process (``vllm.Engine``, float32,
eager) with both checkpoints loaded; its time is measured inside vLLM (generation only, no start-up). Repetitions
alternate base / baked / workbench (order reversed every other repetition) and the median is reported. Needs vLLM
(``./dev test`` installs it into .venv-vllm); on this project's machines it runs on the CPU only, where vLLM computes
on one core, so the workbench gets one torch thread too.

    .venv/bin/python benchmarks/bench_vllm.py [--sizes toy-m,d1024x8] [--batch 16] [--new-tokens 64] [--reps 5]
"""

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import SIZES, checkpoint  # noqa: E402

from workbench import models  # noqa: E402
from workbench.export import vllm  # noqa: E402
from workbench.export.bake import bake_hf  # noqa: E402
from workbench.export.spec import Spec  # noqa: E402
from workbench.generate import generate  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402
from workbench.tokens import tokenize  # noqa: E402
from workbench.toy.prompts import prompts as toy_prompts  # noqa: E402
from workbench.toy.prompts import random_attributes  # noqa: E402


def bench(size: str, engine: vllm.Engine, batch: int, new_tokens: int, reps: int) -> dict:
    src = checkpoint(size)
    model = models.load(src, backend="bridge")
    d, n = model.cfg.d_model, model.cfg.n_layers
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    spec = Spec((AddDirection(HookSite(n // 2), 4.0 * v / v.norm()),), models.fingerprint(model))
    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-vllm-"))
    baked = bake_hf(spec, src, tmp / "baked", dtype="float32")
    texts = [p.text for p in toy_prompts(random_attributes(random.Random(0)), batch, seed=0)][:batch]
    ids = [tokenize(model, t) for t in texts]
    for folder in (src, baked):
        engine.load(folder)

    def run_vllm(folder):
        out = engine.run(folder, ids, max_new_tokens=new_tokens, logprobs=None)
        return engine.last_seconds, out

    def run_workbench():
        t = time.perf_counter()
        g = generate(
            model,
            texts,
            *spec.interventions,
            max_new_tokens=new_tokens,
            temperature=0.0,
            stop_at_eos=False,  # as vLLM with ignore_eos: every row generates new_tokens
            ban_special=False,
        )
        return time.perf_counter() - t, g

    run_vllm(src), run_vllm(baked), run_workbench()  # warm-up
    times: dict[str, list[float]] = {"base": [], "baked": [], "workbench": []}
    last: dict = {}
    runs = (("base", lambda: run_vllm(src)), ("baked", lambda: run_vllm(baked)), ("workbench", run_workbench))
    for i in range(reps):
        for key, fn in runs if i % 2 == 0 else runs[::-1]:  # alternate the order: no side always goes first
            seconds, last[key] = fn()
            times[key].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * new_tokens
    equal = sum(list(c.tokens) == list(t) for c, t in zip(last["baked"], last["workbench"].tokens))
    params = sum(p.numel() for p in model.parameters())
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "size": size,
        "params": params,
        "tok_s": {k: tokens / s for k, s in med.items()},
        "baked_vs_base": med["base"] / med["baked"],
        "vllm_vs_workbench": med["workbench"] / med["baked"],
        "greedy_equal": (equal, batch),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="toy-m,d1024x8", help=f"comma-separated among {', '.join(SIZES)}")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if not vllm.available():
        print("bench_vllm: SKIPPED (vLLM is not installed; `./dev test` installs it into .venv-vllm)")
        return
    torch.set_num_threads(1)  # vLLM's CPU build computes on one core: compare like with like
    print(f"## vLLM {vllm.VLLM_VERSION} (CPU) throughput: baked vs base vs workbench steered generation")
    print(
        f"batch {args.batch} prompts x {args.new_tokens} greedy tokens, float32, median of {args.reps}; "
        f"workbench: bridge backend, KV cache, torch threads {torch.get_num_threads()}; GPU: not measured"
    )
    print()
    print(
        "| model | params | vLLM base tok/s | vLLM baked tok/s | baked / base | workbench steered tok/s | "
        "vLLM baked / workbench | greedy equal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with vllm.Engine(max_model_len=512) as engine:
        for size in args.sizes.split(","):
            r = bench(size, engine, args.batch, args.new_tokens, args.reps)
            t = r["tok_s"]
            print(
                f"| {size} | {r['params'] / 1e6:.1f}M | {t['base']:.0f} | {t['baked']:.0f} | "
                f"**{r['baked_vs_base']:.3f}x** | {t['workbench']:.0f} | {r['vllm_vs_workbench']:.2f}x | "
                f"{r['greedy_equal'][0]}/{r['greedy_equal'][1]} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
