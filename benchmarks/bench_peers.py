"""Steered generation against the peers and against plain Hugging Face, at three model sizes.

    ./dev bench            (installs the peers on demand: scripts/setup_peers.sh)
    .venv/bin/python benchmarks/bench_peers.py [--sizes toy-m,d1024x8,d1536x12] [--prompts 32] [--new 32]

Per size (``_common.SIZES``), on one checkpoint, the same left-padded batch of prompts, greedy, KV cache, every
row run to ``--new`` tokens, every token steered at the middle block's output by one vector:

* ``hf generate``: ``model.generate`` of a plain transformers model, unsteered (the physical limit);
* ``steering-vectors``: ``SteeringVector.apply`` around that ``generate`` (its own hook);
* ``repeng``: ``ControlModel.set_control`` then ``generate``, in its own venv (a worker process; its time is
  measured inside the worker);
* ``workbench``: ``workbench.generate.generate`` steered and unsteered;
* several strengths: 4 strengths x (prompts / 4) rows; the workbench runs them as one batch
  (``generate_at_strengths``), each peer as 4 calls.

Before timing, the steered tokens of the workbench, steering-vectors and repeng must be identical (at a strength
where they differ from the unsteered ones); the benchmark stops otherwise. Repeats are interleaved (medians).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from _common import SIZES, checkpoint  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from workbench import models  # noqa: E402
from workbench.generate import generate, generate_at_strengths  # noqa: E402
from workbench.hooks import captured  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402
from workbench.tokens import make_batch, pad_id_of, tokenize  # noqa: E402
from workbench.toy.measure import steer_prompts  # noqa: E402

STRENGTHS = (0.5, 1.0, 2.0, 4.0)


def peers() -> None:
    subprocess.run(["bash", str(ROOT / "scripts/setup_peers.sh")], check=True)
    sys.path += [str(ROOT / ".venv/peers"), str(ROOT / ".venv/peers/deps")]  # after the main venv's packages


class Repeng:
    """repeng in its own venv, behind benchmarks/_repeng_worker.py."""

    def __init__(self, threads: int) -> None:
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/repeng/bin/python"), str(ROOT / "benchmarks/_repeng_worker.py"), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )

    def ask(self, cmd: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the repeng worker exited; run it by hand to see why")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def timed(fns: dict, reps: int) -> dict:
    """Median seconds per function, interleaved; a function returning a float reports its own time."""
    for f in fns.values():
        f()
    times: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            own = f()
            times[k].append(own if isinstance(own, float) else time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_size(size: str, args, repeng: Repeng) -> list[str]:
    from steering_vectors import SteeringVector

    folder = checkpoint(size)
    model = models.load(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # every row runs to --new tokens, as stop_at_eos=False does
    texts = [p.text for p in steer_prompts("sentiment", "neg", args.prompts, 1)]
    pad = pad_id_of(model)
    batch = make_batch([tokenize(model, t) for t in texts], pad, "left")
    layer = model.cfg.n_layers // 2
    with torch.no_grad(), captured(model, [HookSite(layer)]) as acts:
        model(batch.tokens, attention_mask=batch.attention_mask)
    resid = float(acts[HookSite(layer)][batch.attention_mask.bool()].norm(dim=-1).mean())
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * resid  # as strong as the residual stream itself: continuations change
    kw = dict(max_new_tokens=args.new, temperature=0.0, stop_at_eos=False, ban_special=False)
    gen_kw = dict(max_new_tokens=args.new, do_sample=False, pad_token_id=pad)
    sv = SteeringVector({layer: v}, layer_type="decoder_block")

    def hf_generate(rows=batch):
        with torch.no_grad():
            return hf.generate(input_ids=rows.tokens, attention_mask=rows.attention_mask, **gen_kw)

    def sv_generate(rows=batch, scales=(1.0,)):
        out = []
        with torch.no_grad():
            for s in scales:
                with sv.apply(hf, multiplier=s):
                    out.append(hf_generate(rows)[:, rows.tokens.shape[1] :].tolist())
        return out

    steer = AddDirection(HookSite(layer), v, 1.0)
    ours = [list(t) for t in generate(model, texts, steer, **kw).tokens]
    plain_ = [list(t) for t in generate(model, texts, **kw).tokens]
    repeng.ask(
        {"load": str(folder), "layer": layer, "vector": v.tolist(), "tokens": batch.tokens.tolist(),
         "mask": batch.attention_mask.tolist(), "new": args.new, "pad": pad}
    )  # fmt: skip
    theirs = {"steering-vectors": sv_generate()[0], "repeng": repeng.ask({"run": [1.0]})["tokens"][0]}
    changed = sum(a != b for a, b in zip(ours, plain_))
    for name, toks in theirs.items():
        if toks != ours:
            raise SystemExit(f"{size}: {name}'s steered tokens differ from the workbench's; not timing")
    if changed == 0:
        raise SystemExit(f"{size}: the steering changes no continuation; raise the strength")
    # several strengths: 4 x (prompts / 4) rows
    k = max(1, args.prompts // len(STRENGTHS))
    few = texts[:k]
    few_batch = make_batch([tokenize(model, t) for t in few], pad, "left")
    fns = {
        "hf generate (unsteered)": hf_generate,
        "steering-vectors": sv_generate,
        "repeng": lambda: float(repeng.ask({"run": [1.0]})["seconds"]),
        "workbench steered": lambda: generate(model, texts, steer, **kw),
        "workbench unsteered": lambda: generate(model, texts, **kw),
    }
    t = timed(fns, args.reps)
    repeng.ask(
        {"load": str(folder), "layer": layer, "vector": v.tolist(), "tokens": few_batch.tokens.tolist(),
         "mask": few_batch.attention_mask.tolist(), "new": args.new, "pad": pad}
    )  # fmt: skip
    many = {
        "steering-vectors, 4 calls": lambda: sv_generate(few_batch, STRENGTHS),
        "repeng, 4 calls": lambda: float(repeng.ask({"run": list(STRENGTHS)})["seconds"]),
        "workbench, one batch": lambda: generate_at_strengths(model, few, steer, STRENGTHS, **kw),
    }
    ours_many = [[list(r) for r in g.tokens] for g in generate_at_strengths(model, few, steer, STRENGTHS, **kw)]
    same_many = ours_many == sv_generate(few_batch, STRENGTHS) == repeng.ask({"run": list(STRENGTHS)})["tokens"]
    tm = timed(many, args.reps)
    n_params = sum(p.numel() for p in hf.parameters())
    n = args.prompts * args.new
    base = t["hf generate (unsteered)"]
    lines = [
        f"### {size}: {n_params / 1e6:.0f}M parameters ({model.cfg.n_layers} blocks, d_model {model.cfg.d_model}), "
        f"{args.prompts} prompts x {args.new} new tokens, {args.threads} thread(s)",
        "",
        f"Steered tokens identical across the workbench, steering-vectors and repeng: True ({changed} of "
        f"{args.prompts} continuations differ from unsteered); at 4 strengths: {same_many}.",
        "",
        "| path | tokens/s | x hf generate (tokens/s) |",
        "|---|---|---|",
    ]
    for name, s in t.items():
        lines.append(f"| {name} | {n / s:.0f} | {base / s:.2f} |")
    m = len(STRENGTHS) * k * args.new
    for name, s in tm.items():
        lines.append(f"| {len(STRENGTHS)} strengths x {k} prompts: {name} | {m / s:.0f} | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peers()
    repeng = Repeng(args.threads)
    try:
        print("## Steered generation vs the peers and plain Hugging Face")
        for size in args.sizes.split(","):
            print()
            print("\n".join(run_size(size, args, repeng)), flush=True)
    finally:
        repeng.close()


if __name__ == "__main__":
    main()
