"""Where steered generation spends its time, against the physical limit: a bare Hugging Face decode loop.

    .venv/bin/python benchmarks/profile_generate.py [--model toy-m] [--prompts 32] [--new 32] [--threads 1]

Same checkpoint, same prompts (left-padded batch), greedy, KV cache, every token steered where steered; interleaved
repeats, medians. Rows:

* ``hf loop``: the model's own forward with a ``DynamicCache``, one token per step (the limit a wrapper can reach);
* ``hf loop + hook``: the same with one forward hook adding the direction at a decoder layer's output (what
  steering-vectors and repeng do);
* ``hf generate``: ``model.generate`` (greedy, unsteered);
* ``workbench unsteered`` / ``workbench steered``: ``workbench.generate.generate`` through the backend.

Then the per-step cost of each, and cProfile's top entries for the workbench's steered run: where its extra time
per step goes.
"""

import argparse
import cProfile
import io
import os
import pstats
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _common import interleaved  # noqa: E402
from transformers import AutoModelForCausalLM, DynamicCache  # noqa: E402

from workbench import models  # noqa: E402
from workbench.generate import generate  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402
from workbench.tokens import make_batch, pad_id_of, tokenize  # noqa: E402
from workbench.toy.measure import steer_prompts  # noqa: E402


def hf_loop(hf, batch, new: int, hook=None) -> torch.Tensor:
    """Greedy decode with the model's own forward and KV cache; ``hook`` = (module, fn) adds a forward hook."""
    handle = hook[0].register_forward_hook(hook[1]) if hook else None
    try:
        ids, mask = batch.tokens, batch.attention_mask
        cache, step_ids, out = DynamicCache(), ids, []
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        step_pos = pos
        with torch.no_grad():
            for _ in range(new):
                logits = hf(
                    input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1]  # fmt: skip
                nxt = logits.argmax(-1, keepdim=True)
                out.append(nxt)
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                step_pos = step_pos[:, -1:] + 1
                step_ids = nxt
        return torch.cat(out, dim=1)
    finally:
        if handle is not None:
            handle.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load(args.model)
    hf = AutoModelForCausalLM.from_pretrained(models.hf_folder(args.model), dtype=torch.float32).eval()
    texts = [p.text for p in steer_prompts("sentiment", "neg", args.prompts, 1)]
    batch = make_batch([tokenize(model, t) for t in texts], pad_id_of(model), "left")
    layer = model.cfg.n_layers // 2
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * 4.0
    block = hf.model.layers[layer]

    def add(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + v.to(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    steer = AddDirection(HookSite(layer), v, 1.0)
    kw = dict(max_new_tokens=args.new, temperature=0.0, stop_at_eos=False, ban_special=False)  # as the HF loop
    gen_kw = dict(max_new_tokens=args.new, do_sample=False, min_new_tokens=args.new, pad_token_id=pad_id_of(model))
    fns = {
        "hf loop": lambda: hf_loop(hf, batch, args.new),
        "hf loop + hook": lambda: hf_loop(hf, batch, args.new, (block, add)),
        "hf generate": lambda: hf.generate(input_ids=batch.tokens, attention_mask=batch.attention_mask, **gen_kw),
        "workbench unsteered": lambda: generate(model, texts, **kw),
        "workbench steered": lambda: generate(model, texts, steer, **kw),
    }
    same = hf_loop(hf, batch, args.new, (block, add)).tolist() == [
        list(t) for t in generate(model, texts, steer, **kw).tokens
    ]
    t = interleaved(fns, reps=args.reps)
    n = args.prompts * args.new
    print(f"## Generation profile: {args.model} ({models.backend_of(model)} backend), {args.prompts} prompts x "
          f"{args.new} new tokens, greedy, {args.threads} thread(s)")  # fmt: skip
    print()
    print("| path | tokens/s | ms per step | x hf loop (time) |")
    print("|---|---|---|---|")
    for k, s in t.items():
        print(f"| {k} | {n / s:.0f} | {1000 * s / args.new:.2f} | {s / t['hf loop']:.2f} |")
    print()
    print(f"steered tokens equal between the hooked HF loop and the workbench: {same}")
    prof = cProfile.Profile()
    prof.enable()
    generate(model, texts, steer, **kw)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    print()
    print("cProfile, workbench steered run, top 15 by own time:")
    print("```")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:6000])
    print("```")


if __name__ == "__main__":
    main()
