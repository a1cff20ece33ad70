"""``workbench demo``: the pipeline end to end on the embedded default model, written to one folder.

Until the toy family ships, the embedded default is a tiny random Llama checkpoint written on the spot: the demo
shows every stage working (load, pairs, per-layer directions, exact edits, KV-cached steered generation at
several strengths in one batch, scores) with measured numbers, but random weights carry no behaviour.
"""

__all__ = ["run_demo", "DEMO_PAIRS"]

import json
from pathlib import Path

import torch

from workbench import models
from workbench.activations import collect_pairs
from workbench.directions import compute_directions
from workbench.generate import generate, generate_at_strengths
from workbench.hooks import applied
from workbench.interventions import AddDirection
from workbench.io import atomic_dir, write_json
from workbench.metrics import ab_probability, kl_divergence, perplexity
from workbench.pairs import ContrastPairs
from workbench.sites import HookSite
from workbench.tiny import write_tiny_checkpoint

_SUBJECTS = ["the cat", "a dog", "the bird", "this fish", "the car", "a bus", "the tree", "that house",
             "the sun", "the moon", "the sky", "the sea"]
#: positive = "good" sentiment, negative = "bad", in one template: a minimal edit of the last word.
DEMO_PAIRS = [{"prompt": f"{s} is very", "positive": pos, "negative": neg}
              for s in _SUBJECTS for pos, neg in (("good", "bad"), ("happy", "sad"))]
_REFERENCE = ["the cat sees the dog .", "we love the big blue sea .", "a bird eats a small red fish ."]


def run_demo(out: "str | Path", backend: "str | None" = None, seed: int = 0) -> Path:
    """Run the demo into ``out`` (replaced atomically) and return it."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        ckpt = write_tiny_checkpoint(tmp / "model", "llama", n_layers=4, d_model=64, n_heads=4, seed=seed)
        model = models.load(ckpt, backend=backend)
        pairs = ContrastPairs.from_list(DEMO_PAIRS, source="demo")
        (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in DEMO_PAIRS))
        acts = collect_pairs(model, pairs, position="last", progress=False)
        ds = compute_directions(acts, "mean", model_fingerprint=models.fingerprint(model), seed=seed)
        ds.save(tmp / "directions")

        layer = model.cfg.n_layers // 2
        d = ds.at(layer)
        # 1) the edit lands exactly where it should: block L's output + v = block L+1's input
        tokens = model.to_tokens(_REFERENCE[0])
        with torch.no_grad():
            _, clean = model.run_with_cache(tokens)
            with applied(model, AddDirection(d.site, d.vector, 1.0)):
                _, steered = model.run_with_cache(tokens)
        exact = float((steered[HookSite(layer + 1, "resid_pre").name]
                       - clean[d.site.name] - d.vector).abs().max())
        # 2) KV-cached steering equals a full recompute
        iv = AddDirection(d.site, d.vector, 4.0)
        kw = dict(max_new_tokens=8, temperature=0.0, return_logits=True)
        cached = generate(model, ["the cat is", "we"], iv, **kw)
        full = generate(model, ["the cat is", "we"], iv, use_cache=False, **kw)
        cache_diff = float((cached.logits - full.logits).abs().max())
        # 3) several strengths in one batch, with scores
        scales = [-4.0, -1.0, 0.0, 1.0, 4.0]
        gens = generate_at_strengths(model, ["the cat is", "a dog"], iv, scales, max_new_tokens=8, seed=seed)
        rows = []
        for s, g in zip(scales, gens):
            edit = AddDirection(d.site, d.vector, s)
            rows.append({
                "scale": s,
                "p_positive": float(ab_probability(model, pairs, edit).mean()),
                "kl_to_unsteered": kl_divergence(model, _REFERENCE, edit),
                "perplexity": perplexity(model, _REFERENCE, edit),
                "samples": list(g.texts),
            })
        results = {
            "model": models.fingerprint(model).to_dict(), "backend": models.backend_of(model),
            "n_pairs": len(pairs), "steered_layer": layer,
            "direction_quality": [{"layer": x.site.layer, **x.quality.to_dict()} for x in ds.directions],
            "checks": {"additive_edit_max_abs_error": exact, "cached_vs_recompute_max_abs_logit_diff": cache_diff},
            "strengths": rows,
        }
        write_json(tmp / "results.json", results)
        (tmp / "summary.md").write_text(_summary(results))
    return out


def _summary(r: dict) -> str:
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        "# workbench demo (embedded default: tiny random Llama, 4 layers, d_model 64)",
        "",
        "Random weights: these numbers show the pipeline working, not a behaviour. The trained toy family",
        "(synthetic language with known attributes) replaces this model as the embedded default.",
        "",
        f"backend: {r['backend']}  |  pairs: {r['n_pairs']}  |  steered layer: {r['steered_layer']} (resid_post)",
        "",
        "## Direction quality per layer (held-out pairs)",
        "",
        "| layer | norm | probe acc | AUROC | effect size |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {q['layer']} | {q['norm']:.3f} | {fmt(q['probe_accuracy'])} | {fmt(q['auroc'])} | "
              f"{fmt(q['effect_size'])} |" for q in r["direction_quality"]]
    c = r["checks"]
    lines += [
        "",
        "## Checks",
        "",
        f"- additive edit lands in the next block's input: max |error| = {c['additive_edit_max_abs_error']:.2e}",
        f"- KV-cached steered generation vs full recompute: max |logit diff| = "
        f"{c['cached_vs_recompute_max_abs_logit_diff']:.2e}",
        "",
        "## Strengths (one batched generation pass)",
        "",
        "| scale | p(positive answer) | KL to unsteered | perplexity | sample |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s['scale']:+.1f} | {s['p_positive']:.3f} | {s['kl_to_unsteered']:.4f} | {s['perplexity']:.1f} | "
              f"{s['samples'][0]!r} |" for s in r["strengths"]]
    return "\n".join(lines) + "\n"
