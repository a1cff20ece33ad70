"""The ``workbench`` command: a thin layer that parses arguments, calls the library and writes results.

Every failure is one line on stderr and a non-zero exit (set ``WORKBENCH_DEBUG=1`` for tracebacks); outputs are
written atomically, so a failed command leaves no partial folder.
"""

__all__ = ["main"]

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from workbench.errors import WorkbenchError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2-core machines: spin-waiting threads cost 8x


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise WorkbenchError(f"{self.prog}: {message} (see --help)")


def _layers(text: str) -> "list[int] | None":
    if text == "all":
        return None
    try:
        out: list[int] = []
        for part in text.split(","):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
        return out
    except ValueError:
        raise WorkbenchError(f"--layers must be 'all', a list like 0,2,5 or a range like 2-6; got {text!r}.") from None


def _fresh_out(out: "str | Path", overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite (checked before any work starts)."""
    if Path(out).exists() and not overwrite:
        raise WorkbenchError(f"--out {str(out)!r} already exists; remove it or pass --overwrite.")


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _load(args):
    from workbench import models

    return models.load(args.model, backend=args.backend, bos=getattr(args, "bos", "auto"),
                       chat_template=getattr(args, "chat_template", False))


def cmd_info(args) -> int:
    from workbench import models

    m = _load(args)
    fp = models.fingerprint(m)
    c = m.cfg
    info = {
        "model": args.model, "backend": models.backend_of(m), "architecture": fp.architecture,
        "n_layers": c.n_layers, "d_model": c.d_model, "n_heads": c.n_heads, "d_head": c.d_head,
        "d_mlp": c.d_mlp, "d_vocab": c.d_vocab, "n_ctx": c.n_ctx,
        "parameters": sum(p.numel() for p in m.parameters()), "fingerprint": fp.to_dict(),
        "tokenization": models.tokenization_of(m).to_dict(), "self_check_max_logit_diff": models.info(m).self_check,
    }
    source = models.source_of(m)
    if source is not None:
        from workbench.export.support import formats
        from workbench.io import read_json

        info["exports"] = formats(str(read_json(Path(source) / "config.json").get("model_type")), fp.architecture)
    print(json.dumps(info, indent=2))
    return 0


def cmd_directions(args) -> int:
    from workbench import models
    from workbench.activations import collect_pairs
    from workbench.directions import compute_directions
    from workbench.pairs import load_pairs
    from workbench.sites import layer_sites

    pairs = load_pairs(args.pairs)  # validate the cheap inputs before loading a model
    _fresh_out(args.out, args.overwrite)
    m = _load(args)
    sites = layer_sites(m, _layers(args.layers), args.kind)
    acts = collect_pairs(m, pairs, sites, position=args.position, batch_size=args.batch_size)
    ds = compute_directions(acts, args.method, model_fingerprint=models.fingerprint(m), seed=args.seed)
    ds.save(args.out)
    print(f"wrote {len(ds.directions)} {args.method} directions ({len(pairs)} pairs, position={args.position}) "
          f"to {args.out}")
    for d in ds.directions:
        q = d.quality
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"  layer {d.site.layer:>3}  norm {q.norm:9.4f}  probe_acc {fmt(q.probe_accuracy)}  "
              f"auroc {fmt(q.auroc)}  effect {fmt(q.effect_size)}")
    return 0


def cmd_steer(args) -> int:
    from workbench.directions import DirectionSet
    from workbench.generate import generate_at_strengths
    from workbench.interventions import AddDirection
    from workbench.positions import Positions

    positions = Positions.parse(args.positions)
    m = _load(args)
    ds = DirectionSet.load(args.vector, m)
    d = ds.at(args.layer, args.kind)
    scales = [0.0, args.scale] if args.compare else [args.scale]
    gens = generate_at_strengths(m, args.prompt, AddDirection(d.site, d.vector, args.scale, positions), scales,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    for s, g in zip(scales, gens):
        for p, t in zip(g.prompts, g.texts):
            print(json.dumps({"scale": s, "layer": args.layer, "prompt": p, "completion": t}))
    return 0


def _export_spec(args):
    """The spec to export: a spec folder as it is, or directions folder + --layers + --scale."""
    from workbench.directions import DirectionSet
    from workbench.export.spec import MANIFEST, Spec, spec_from_directions
    from workbench.positions import Positions

    folder = Path(args.vector)
    if (folder / MANIFEST).is_file():
        if args.layers is not None or args.scale is not None:
            raise WorkbenchError(f"{folder} is a spec: it already fixes layers and scale; drop --layers/--scale.")
        return Spec.load(folder)
    if args.layers is None or args.scale is None:
        raise WorkbenchError("exporting from a directions folder needs --layers (0-based blocks) and --scale.")
    layers = _layers(args.layers)
    if layers is None:
        raise WorkbenchError("--layers all is not an edit; pass the blocks to steer, e.g. --layers 2 or 1,3.")
    ds = DirectionSet.load(folder)
    return spec_from_directions(ds, layers, args.scale, kind=args.kind, positions=Positions.parse(args.positions),
                                source=str(folder))


def cmd_export(args) -> int:
    from workbench.export.bake import bake_hf
    from workbench.export.gguf import write_gguf

    spec = _export_spec(args)
    out = Path(args.out)
    _fresh_out(out, args.overwrite)
    if (args.format == "hf-baked" or args.check) and not args.model:
        raise WorkbenchError(f"--format {args.format}{' --check' if args.check else ''} needs --model (the checkpoint "
                             f"the vector was made for).")
    prompts = _check_prompts(args) if args.check else None  # validated before anything is written
    from workbench import models

    model = None
    if args.model:
        model = _load(args)
        spec.check(model)
    if args.format == "spec":
        spec.save(out)
    elif args.format == "gguf":
        write_gguf(spec, out)  # refuses what llama.cpp cannot express before writing anything
    else:
        bake_hf(spec, models.hf_folder(args.model), out, dtype=args.dtype, overwrite=args.overwrite)
    what = ", ".join(f"{iv.site.name} {'x' + str(iv.scale) if hasattr(iv, 'scale') else 'ablated'}"
                     for iv in spec.interventions)
    print(f"wrote {args.format} to {out} ({what})")
    if args.check:
        return _check_export(args, model, spec, out, prompts)
    return 0


def _check_prompts(args) -> "list[str]":
    """The prompts --check runs on: --prompt, the first 16 lines of --prompts FILE, the texts of the first 8 pairs
    of --pairs FILE, or a toy model's own text."""
    if args.prompt:
        return list(args.prompt)
    if args.prompts:
        try:
            lines = [ln for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise WorkbenchError(f"--prompts {args.prompts!r} could not be read ({type(e).__name__}); pass a UTF-8 "
                                 f"text file with one prompt per line.") from None
        if not lines:
            raise WorkbenchError(f"--prompts {args.prompts!r} holds no prompt; write one prompt per line.")
        return lines[:16]
    if args.pairs:
        from workbench.pairs import load_pairs

        return [t for p in load_pairs(args.pairs).pairs[:8] for t in p.texts]
    if str(args.model).startswith("toy-"):
        import random

        from workbench.toy.prompts import prompts as toy_prompts, random_attributes

        return [p.text for p in toy_prompts(random_attributes(random.Random(0)), 3, seed=0)]
    raise WorkbenchError("--check needs the prompts to check on: --prompts FILE (one per line), --pairs FILE (the "
                         "pairs the vector was made from) or --prompt TEXT.")


def _check_export(args, model, spec, out: Path, prompts: "list[str]") -> int:
    from workbench.export import llamacpp
    from workbench.export.parity import check, tolerance

    path = {"spec": "apply_hf", "gguf": "llama.cpp", "hf-baked": "baked"}[args.format]
    if path == "llama.cpp" and not llamacpp.available():
        print("check llama.cpp: SKIPPED (llama-cpp-python and its converter are not installed; `./dev test` installs "
              "them, or pip install llama-cpp-python and set WORKBENCH_LLAMA_CONVERTER)")
        return 0
    dtype = "float32"
    if path == "baked":
        from workbench.io import read_json

        dtype = str(read_json(out / "workbench_bake.json").get("dtype", "float32"))
    tol = tolerance(path, dtype)
    failed = False
    for row in check(model, spec, prompts, paths=(path,), artifacts={path: out}):
        ok = row.passes(tol)
        failed |= not ok
        print(f"check {row.path}: {'PASS' if ok else 'FAIL'} max |logit diff| {row.max_abs_diff:.2e} "
              f"(tolerance {tol:.0e}, {dtype}), effect {row.effect:.3f}, {row.n_tokens} tokens")
        print(json.dumps({**row.to_dict(), "tolerance": tol, "pass": ok}))
    return 1 if failed else 0


def cmd_import(args) -> int:
    from workbench.export.gguf import read_gguf

    _fresh_out(args.out, args.overwrite)
    if not Path(args.file).is_file():
        raise WorkbenchError(f"{args.file!r} does not exist; pass a .gguf control vector file.")
    spec = read_gguf(args.file, _load(args))
    spec.save(args.out)
    print(f"imported {len(spec.interventions)} direction(s) from {args.file} into the spec {args.out}: "
          f"{', '.join(iv.site.name for iv in spec.interventions)}")
    return 0


def _floats(text: str, what: str) -> tuple:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise WorkbenchError(f"{what} must be comma-separated numbers like -1,0.5,2; got {text!r}.") from None


def _write_analysis(out: Path, result, figures: dict, extra=None) -> None:
    from workbench.io import atomic_dir, write_json
    from workbench.plotting import write_figures

    with atomic_dir(out) as tmp:
        write_json(tmp / "result.json", result.to_dict())
        write_figures(tmp / "figures", figures)
        if extra is not None:
            extra(tmp)


def cmd_analyze_layer_sweep(args) -> int:
    from analyses import layer_sweep as ls

    kw = {"strengths": _floats(args.strengths, "--strengths")} if args.strengths else {}
    cfg = ls.Config(args.attribute, kind=args.kind, layers=_layers(args.layers), n_prompts=args.n_prompts,
                    n_pairs=args.n_pairs, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    seed=args.seed, **kw)  # validate before loading the model
    _fresh_out(args.out, args.overwrite)
    result = ls.run(_load(args), cfg, name=args.model)
    _write_analysis(Path(args.out), result, ls.plot(result))
    b, c = result.best, result.cost
    print(f"layer sweep of {args.attribute} on {args.model}: {len(result.cells)} cells in {c['seconds_total']} s "
          f"({c['ratio_generation_to_unsteered']}x one unsteered generation pass for all generations)")
    print("best cell: none within the fluency bound" if b is None else
          f"best cell: layer {b['layer']} (depth {b['depth']}), strength {b['strength']} (relative "
          f"{b['relative_strength']}): {cfg.target} rate {b['target_rate']:.2f}, grammaticality "
          f"{b['grammaticality']:.2f}, KL {b['kl']:.3f}")
    print(f"wrote {args.out}/result.json and figures/")
    return 0


def cmd_analyze_heads(args) -> int:
    from analyses import heads

    cfg = heads.Config(args.attribute, n_pairs=args.n_pairs, readout_layer=args.readout_layer,
                       steer_strengths=_floats(args.strengths, "--strengths"), n_prompts=args.n_prompts,
                       max_new_tokens=args.max_new_tokens, seed=args.seed)
    _fresh_out(args.out, args.overwrite)
    result = heads.run(_load(args), cfg, name=args.model, steer=not args.no_generate)
    _write_analysis(Path(args.out), result, heads.plot(result))
    print(f"heads for {args.attribute} on {args.model} ({result.cost['seconds']} s); top head per method "
          f"(layer, head, value):")
    for method, cells in result.top.items():
        print(f"  {method:<12} " + "  ".join(f"L{c[0]}H{c[1]} {c[2]:+.3f}" for c in cells[:3]))
    a = result.agreement
    print(f"attribution vs real patching: pearson {a['pearson']:.2f}, top-{cfg.top_k} overlap {a['top_k_overlap']}")
    if result.steering.get("best"):
        b = result.steering["best"]
        print(f"best single-head steering: L{b['layer']}H{b['head']} x{b['strength']}: target rate "
              f"{b['target_rate']:.2f}")
    print(f"wrote {args.out}/result.json and figures/")
    return 0


def cmd_analyze_spectral(args) -> int:
    from analyses import spectral_study as ss

    cfg = ss.Config(site=args.site, layers=args.layers if args.layers in ("last-half", "all") else
                    tuple(_layers(args.layers)),
                    ratio=args.ratio, center=not args.no_center, phi_feature=args.phi, n_demos=args.n_demos,
                    demo_counts=tuple(int(x) for x in _floats(args.demo_counts, "--demo-counts")),
                    n_eval=args.n_eval, seed=args.seed)
    _fresh_out(args.out, args.overwrite)
    result = ss.run(_load(args), cfg, name=args.model)
    _write_analysis(Path(args.out), result, ss.plot(result))
    print(f"SEA study on {args.model} ({result.cost['seconds']} s), edited layers {result.config['layers']} "
          f"({cfg.site}); multiple-choice accuracy [95% CI]:")
    for m in result.methods:
        a, h = m["mc_liar"], m["mc_honest"]
        print(f"  {m['method']:<48} liar items {a['accuracy']:.2f} {a['accuracy_ci']}  honest items "
              f"{h['accuracy']:.2f}  perplexity {m['perplexity']:.3f}")
    print(f"wrote {args.out}/result.json and figures/")
    return 0


def _robustness(args, module, cfg, run):
    _fresh_out(args.out, args.overwrite)
    result = run(cfg)
    _write_analysis(Path(args.out), result, module.plot(result))
    return result


def cmd_analyze_sample_size(args) -> int:
    from analyses import sample_size as m

    cfg = m.Config(args.attribute, ns=tuple(int(x) for x in _floats(args.ns, "--ns")), resamples=args.resamples,
                   pool=args.pool, layer=args.layer, strength=args.strength, n_prompts=args.n_prompts,
                   max_new_tokens=args.max_new_tokens, seed=args.seed)
    r = _robustness(args, m, cfg, lambda c: m.run(_load(args), c, name=args.model))
    print(f"sample size, {args.attribute} on {args.model} (L{r.site['layer']} x{r.site['strength']:g}): full-pool "
          f"effect {r.full['effect']:+.3f}; saturation N = {r.saturation_n}")
    for x in r.rows:
        print(f"  N={x['n']:<4} effect {x['effect_mean']:+.3f} [{x['effect_ci'][0]:+.3f}, {x['effect_ci'][1]:+.3f}]  "
              f"cosine {x['cosine_mean']:.3f}")
    return 0


def cmd_analyze_distribution_shift(args) -> int:
    from analyses import distribution_shift as m

    cfg = m.Config(args.attribute, layer=args.layer, strength=args.strength, n_prompts=args.n_prompts,
                   max_new_tokens=args.max_new_tokens, seed=args.seed)
    r = _robustness(args, m, cfg, lambda c: m.run(_load(args), c, name=args.model))
    print(f"distribution shift, {args.attribute} on {args.model} (L{r.site['layer']} x{r.site['strength']:g}):")
    for x in r.families:
        ratio = "n/a" if x["ratio_to_id"] is None else f"{x['ratio_to_id']:.2f}"
        print(f"  {x['family']:<11} unsteered {x['unsteered']:.2f}  steered {x['steered']:.2f} {x['steered_ci']}  "
              f"effect {x['effect']:+.2f}  OOD/ID {ratio}")
    return 0


def cmd_analyze_model_size(args) -> int:
    from analyses import model_size as m
    from workbench import models

    cfg = m.Config(args.attribute, depth=args.depth, n_prompts=args.n_prompts, max_new_tokens=args.max_new_tokens,
                   seed=args.seed)
    names = [x for x in args.models.split(",") if x]
    r = _robustness(args, m, cfg, lambda c: m.run({n: models.load(n, backend=args.backend) for n in names}, c))
    print(f"model size, {args.attribute}, depth {args.depth}: harm slopes per unit relative strength")
    for x in r.models:
        sl = x["slopes"]
        print(f"  {x['name']:<6} L{x['layer']}  KL {sl['kl']:.3f}  perplexity {sl['perplexity']:.3f}  "
              f"grammaticality drop {sl['grammaticality_drop']:.3f}")
    return 0


def cmd_analyze_adversarial(args) -> int:
    from analyses import adversarial as m
    from workbench import models

    cfg = m.Config(args.attribute, layer=args.layer, strength=args.strength, method=args.method,
                   suffix_len=args.suffix_len, steps=args.steps, n_train=args.n_train, n_heldout=args.n_heldout,
                   ce_weight=args.ce_weight, max_new_tokens=args.max_new_tokens, seed=args.seed)
    others = [x for x in (args.transfer or "").split(",") if x]
    r = _robustness(args, m, cfg, lambda c: m.run(_load(args), c, name=args.model,
                                                  others={n: models.load(n, backend=args.backend) for n in others}))
    h = r.heldout
    print(f"adversarial ({args.method}) on {args.model}, {args.attribute}: suffix {r.suffix['text']!r} "
          f"(cross-entropy {r.suffix['ce']:.2f} nats/token); held-out reversal rate {h['reversal_rate']:.2f}; "
          f"target rate steered {h['target_rate']['steered']:.2f} -> with suffix "
          f"{h['target_rate']['steered_with_suffix']:.2f}")
    for t in r.transfer:
        if "reversal_rate" in t:
            print(f"  transfer to {t['model']}: reversal {t['reversal_rate']:.2f}, target rate "
                  f"{t['target_rate']['steered']:.2f} -> {t['target_rate']['steered_with_suffix']:.2f}")
    sy = r.symmetry
    print(f"symmetry: log-odds shift +s {sy['logodds_shift_plus']:+.3f}, -s {sy['logodds_shift_minus']:+.3f}")
    return 0


def cmd_analyze_composition(args) -> int:
    from analyses import composition as m

    props = tuple(x for x in args.properties.split(",") if x)
    pairs = tuple(tuple(p.split("+")) for p in args.pairs.split(",") if p)
    cfg = m.Config(properties=props, pairs=pairs, fixed_alphas=_floats(args.fixed_alphas, "--fixed-alphas"),
                   alpha_max=args.alpha_max, top_p=args.top_p, normalisation=args.normalisation, kind=args.kind,
                   n_icl=args.n_icl, n_test=args.n_test, steps=args.steps, seed=args.seed)
    r = _robustness(args, m, cfg, lambda c: m.run(_load(args), c, name=args.model))
    print(f"DAC on {args.model} ({r.cost['seconds']} s): property accuracy / grammaticality / delta-ppl")
    for x in r.single + r.composed:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in x["accuracy"].items())
        print(f"  {'+'.join(x['properties']):<20} {x['strategy']:<11} alpha {x['alpha']:<4g} {acc:<32} "
              f"gram {x['grammaticality']:.2f}  dppl {x['delta_ppl']:+.2f}")
    return 0


def cmd_report(args) -> int:
    from workbench.report import build_report

    html_path, md_path = build_report(args.results, args.out, title=args.title)
    print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_analyze_tuning(args) -> int:
    import shutil
    import tempfile

    from analyses import tuning as m

    cfg = m.Config(layers=None if args.layers == "middle" else tuple(_layers(args.layers) or ()),
                   n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval, max_steps=args.max_steps,
                   token_weight=args.token_weight, seed=args.seed)
    _fresh_out(args.out, args.overwrite)
    with tempfile.TemporaryDirectory() as work:
        r = m.run(_load(args), cfg, name=args.model, out=work)
        _write_analysis(Path(args.out), r, m.plot(r),
                        extra=lambda tmp: shutil.copytree(Path(work) / "tuned-model", tmp / "tuned-model"))
    print(f"representation tuning on {args.model}, layers {r.config['layers']} ({r.cost['seconds']} s); truthful "
          f"MC accuracy [95% CI] on liar-persona items:")
    for row in r.settings:
        a = row["liar_id"]
        ood = " ".join(f"{k[5:]} {row[k]['accuracy']:.2f}" for k in row
                       if k.startswith("liar_") and k not in ("liar_id", "liar_id_opposed"))
        print(f"  {row['setting']:<42} ID {a['accuracy']:.2f} {a['accuracy_ci']}  OOD {ood}  opposed "
              f"{row['liar_id_opposed']['accuracy']:.2f}  honest items {row['honest_id']['accuracy']:.2f}")
    print(f"tuned checkpoint (Hugging Face, with tuning_card.json): {Path(args.out) / 'tuned-model'}")
    return 0


def cmd_demo(args) -> int:
    from workbench.demo import run_demo

    _fresh_out(args.out, args.overwrite)
    out = run_demo(args.out, model=args.model, backend=args.backend, n_prompts=args.n_prompts)
    print((out / "summary.md").read_text())
    return 0


def cmd_toy_train(args) -> int:
    import dataclasses

    from workbench.toy.language import CorpusConfig
    from workbench.toy.train import SIZES, train

    options = {name: value for name, value in (("p_collocation", args.p_collocation),
                                               ("p_catalogue", args.p_catalogue)) if value is not None}
    try:
        corpus = CorpusConfig(**options)
    except ValueError as e:
        flag = next((n for n in options if n in str(e)), "p_collocation").replace("_", "-")
        raise WorkbenchError(f"--{flag}: {e}") from None
    size = SIZES[args.size]
    if args.embed_std is not None:
        try:
            size = dataclasses.replace(size, embed_std=args.embed_std)
        except ValueError as e:
            raise WorkbenchError(f"--embed-std: {e}") from None
    out = Path(args.out or f"{args.size}")
    _fresh_out(out, args.overwrite)
    card = train(size, out, steps=args.steps, corpus=corpus)
    print(f"trained {args.size} into {out}: validation loss {card['validation_loss']:.4f} "
          f"({card['train_seconds']['wall']:.0f} s wall, {card['train_seconds']['cpu']:.0f} CPU-s)")
    if not args.no_measure:
        _measure_into(out, args)
    return 0


def _measure_into(folder: Path, args) -> dict:
    from workbench import models
    from workbench.io import read_json, write_json
    from workbench.toy.measure import measure

    card_path = folder / "card.json"
    if not card_path.is_file():
        raise WorkbenchError(f"{folder} has no card.json; it is not a toy checkpoint written by `workbench toy train`.")
    model = models.load(folder, backend=args.backend)
    card = read_json(card_path)
    card["measured"] = measure(model, n_prompts=args.n_prompts, seed=args.seed)
    write_json(card_path, card)
    failed = [k for k, ok in card["measured"]["checks"].items() if not ok]
    print(f"measured {folder}: {len(card['measured']['checks']) - len(failed)} of "
          f"{len(card['measured']['checks'])} bars met" + (f"; missed: {', '.join(failed)}" if failed else ""))
    return card


def cmd_toy_measure(args) -> int:
    from workbench.toy import NAMES, checkpoint_dir

    folder = checkpoint_dir(args.model) if args.model in NAMES else Path(args.model)
    _measure_into(folder, args)
    return 0


def cmd_toy_cards(args) -> int:
    from workbench.toy import NAMES, card
    from workbench.toy.measure import cards_markdown

    print(cards_markdown({name: card(name) for name in NAMES}))
    return 0


def cmd_toy_sample(args) -> int:
    from workbench.toy.language import documents

    stream = documents(args.seed)
    for _ in range(args.n):
        print(next(stream))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(sp):
        sp.add_argument("--model", required=True, help="TransformerLens name, local HF folder or toy name")
        sp.add_argument("--backend", choices=["bridge", "hooked"], default=None,
                        help="TransformerBridge (TL 4.x) or HookedTransformer (TL 3.x); default: the installed one")
        sp.add_argument("--bos", choices=["auto", "always", "never"], default="auto",
                        help="BOS handling: auto = as the model's tokenizer does (default), always, never")
        sp.add_argument("--chat-template", action="store_true",
                        help="wrap each prompt as a user turn of the tokenizer's chat template (instruct models)")

    sp = sub.add_parser("info", help="model summary and fingerprint")
    model_args(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("directions", help="contrastive directions per layer from a pairs file")
    model_args(sp)
    sp.add_argument("--pairs", required=True, help="JSONL of {positive, negative[, prompt]} or CAA A/B items")
    sp.add_argument("--out", required=True, help="output folder (directions.json + directions.safetensors)")
    sp.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    sp.add_argument("--position", choices=["last", "answer", "mean"], default="last")
    sp.add_argument("--layers", default="all", help="'all', '0,2,5' or '2-6' (0-based blocks)")
    sp.add_argument("--kind", default="resid_post", help="site kind (resid_post = output of the block)")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_directions)

    sp = sub.add_parser("steer", help="generate with a saved direction added")
    model_args(sp)
    sp.add_argument("--vector", required=True, help="a folder written by `workbench directions`")
    sp.add_argument("--layer", type=int, required=True, help="0-based block whose output is steered")
    sp.add_argument("--kind", default="resid_post")
    sp.add_argument("--scale", type=float, required=True, help="multiple of the direction (1 = mean pair difference)")
    sp.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    sp.add_argument("--positions", default="all", help="all | generated | from:K")
    sp.add_argument("--max-new-tokens", type=int, default=32)
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--compare", action="store_true", help="also print the unsteered continuation (scale 0)")
    sp.set_defaults(func=cmd_steer)

    sp = sub.add_parser("export", help="export a direction as a spec, a llama.cpp control vector or a baked checkpoint")
    sp.add_argument("--vector", required=True, help="a directions folder (with --layers, --scale) or a spec folder")
    sp.add_argument("--format", required=True, choices=["spec", "gguf", "hf-baked"])
    sp.add_argument("--out", required=True, help="spec folder, .gguf file or checkpoint folder")
    sp.add_argument("--layers", default=None, help="0-based blocks to steer: '2', '1,3' or '1-3'")
    sp.add_argument("--kind", default="resid_post", help="site kind of the directions (resid_post = block output)")
    sp.add_argument("--scale", type=float, default=None, help="strength (1 = the mean pair difference)")
    sp.add_argument("--positions", default="all", help="all | generated | from:K (GGUF and baked need all)")
    sp.add_argument("--model", default=None, help="the checkpoint it was made for (needed by hf-baked and --check)")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--bos", choices=["auto", "always", "never"], default="auto", help="BOS handling (see directions)")
    sp.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template (see directions)")
    sp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="hf-baked weights' precision (default: the source checkpoint's)")
    sp.add_argument("--check", action="store_true",
                    help="prove parity: run the exported form where it deploys and compare with TransformerLens")
    sp.add_argument("--prompt", action="append", default=None, help="a prompt for --check (repeat for several)")
    sp.add_argument("--prompts", default=None, help="a text file of prompts for --check, one per line (first 16)")
    sp.add_argument("--pairs", default=None, help="a pairs file whose texts --check runs on (first 8 pairs)")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("import", help="import a llama.cpp / repeng GGUF control vector as a spec")
    sp.add_argument("file", help="a .gguf control vector")
    model_args(sp)
    sp.add_argument("--out", required=True, help="spec folder to write")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_import)

    analyze = sub.add_parser("analyze", help="sensitivity analyses on toy models").add_subparsers(
        dest="analysis", required=True, parser_class=_Parser)
    sp = analyze.add_parser("layer-sweep", help="behaviour and fluency cost over layers x strengths")
    model_args(sp)
    sp.add_argument("--attribute", required=True, choices=["sentiment", "topic", "register", "language", "truth"])
    sp.add_argument("--out", required=True, help="folder for result.json and figures/")
    sp.add_argument("--layers", default="all")
    sp.add_argument("--kind", default="resid_post")
    sp.add_argument("--strengths", default=None, help="comma-separated, both signs: --strengths=-1,0.5,2 (default -2..3)")
    sp.add_argument("--n-prompts", type=int, default=48)
    sp.add_argument("--n-pairs", type=int, default=200)
    sp.add_argument("--max-new-tokens", type=int, default=24)
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_analyze_layer_sweep)
    sp = analyze.add_parser("heads", help="direct attribution, patching, attribution patching, per-head steering")
    model_args(sp)
    sp.add_argument("--attribute", required=True, choices=["sentiment", "topic", "register", "language", "truth"])
    sp.add_argument("--out", required=True, help="folder for result.json and figures/")
    sp.add_argument("--n-pairs", type=int, default=64)
    sp.add_argument("--readout-layer", type=int, default=None, help="direction for direct attribution (default last)")
    sp.add_argument("--strengths", default="2,4", help="per-head steering strengths")
    sp.add_argument("--n-prompts", type=int, default=32)
    sp.add_argument("--max-new-tokens", type=int, default=16)
    sp.add_argument("--no-generate", action="store_true", help="skip the sampled per-head steering (keep the rest)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_analyze_heads)

    sp = analyze.add_parser("spectral", help="SEA on toy truthfulness: linear / Phi-SEA vs few-shot and steering")
    model_args(sp)
    sp.add_argument("--out", required=True, help="folder for result.json and figures/")
    sp.add_argument("--site", choices=["mlp_out", "resid_post"], default="mlp_out")
    sp.add_argument("--layers", default="last-half", help="edited layers: 'last-half' (default), 'all', '2,3', '1-3'")
    sp.add_argument("--ratio", type=float, default=0.998, help="explained-variance ratio for k")
    sp.add_argument("--no-center", action="store_true", help="uncentred cross-covariances (the official scripts)")
    sp.add_argument("--phi", default="tanh", choices=["squared_exponential", "tanh", "elu"])
    sp.add_argument("--n-demos", type=int, default=1000)
    sp.add_argument("--demo-counts", default="25,50,100,200,400,1000,2000")
    sp.add_argument("--n-eval", type=int, default=200)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_analyze_spectral)

    def robust_args(sp, model=True, n_prompts=True):
        if model:
            model_args(sp)
        sp.add_argument("--attribute", required=True, choices=["sentiment", "topic", "register", "language", "truth"])
        sp.add_argument("--out", required=True, help="folder for result.json and figures/")
        if n_prompts:
            sp.add_argument("--n-prompts", type=int, default=48)
        sp.add_argument("--max-new-tokens", type=int, default=24)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--overwrite", action="store_true")

    def cell_args(sp):
        sp.add_argument("--layer", type=int, default=None, help="default: the toy card's best cell")
        sp.add_argument("--strength", type=float, default=None)

    sp = analyze.add_parser("sample-size", help="steering effect and cosine vs number of pairs")
    robust_args(sp)
    cell_args(sp)
    sp.add_argument("--ns", default="1,2,5,10,20,40,80,160,320")
    sp.add_argument("--resamples", type=int, default=5)
    sp.add_argument("--pool", type=int, default=640)
    sp.set_defaults(func=cmd_analyze_sample_size)
    sp = analyze.add_parser("distribution-shift", help="effect on in- vs out-of-distribution prompt families")
    robust_args(sp)
    cell_args(sp)
    sp.set_defaults(func=cmd_analyze_distribution_shift)
    sp = analyze.add_parser("model-size", help="fluency harm vs relative strength across the toy family")
    robust_args(sp, model=False)
    sp.add_argument("--models", default="toy-s,toy-m,toy-l")
    sp.add_argument("--depth", type=float, default=0.5)
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.set_defaults(func=cmd_analyze_model_size)
    sp = analyze.add_parser("adversarial", help="search a suffix that reverses steering (GCG / EPO)")
    robust_args(sp, n_prompts=False)
    cell_args(sp)
    sp.add_argument("--method", choices=["gcg", "epo"], default="gcg")
    sp.add_argument("--suffix-len", type=int, default=4)
    sp.add_argument("--steps", type=int, default=40)
    sp.add_argument("--n-train", type=int, default=8)
    sp.add_argument("--n-heldout", type=int, default=48)
    sp.add_argument("--ce-weight", type=float, default=0.1, help="EPO: weight of the suffix cross-entropy")
    sp.add_argument("--transfer", default="", help="other models to try the suffix on, e.g. toy-s,toy-l")
    sp.set_defaults(func=cmd_analyze_adversarial)

    sp = analyze.add_parser("composition", help="DAC: fixed / start / diminishing / dynamic strengths, 1-2 properties")
    model_args(sp)
    sp.add_argument("--out", required=True, help="folder for result.json and figures/")
    sp.add_argument("--properties", default="language,sentiment,register")
    sp.add_argument("--pairs", default="language+sentiment,sentiment+register")
    sp.add_argument("--fixed-alphas", default="0.5,1,2,3,4")
    sp.add_argument("--alpha-max", type=float, default=2.0)
    sp.add_argument("--top-p", type=float, default=0.9)
    sp.add_argument("--normalisation", choices=["none", "seed"], default="none",
                    help="'seed' divides the KL by |S| as the DAC code does")
    sp.add_argument("--kind", choices=["z", "resid_post"], default="z")
    sp.add_argument("--n-icl", type=int, default=30)
    sp.add_argument("--n-test", type=int, default=50)
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_analyze_composition)

    sp = analyze.add_parser("tuning", help="representation tuning vs online steering on toy truthfulness")
    model_args(sp)
    sp.add_argument("--out", required=True, help="folder for result.json, figures/ and tuned-model/")
    sp.add_argument("--layers", default="middle", help="blocks to tune: 'middle' (default) or e.g. '1,2'")
    sp.add_argument("--n-train", type=int, default=600)
    sp.add_argument("--n-val", type=int, default=100)
    sp.add_argument("--n-eval", type=int, default=200)
    sp.add_argument("--max-steps", type=int, default=200)
    sp.add_argument("--token-weight", type=float, default=1.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_analyze_tuning)

    toy = sub.add_parser("toy", help="the toy world: train, measure, sample").add_subparsers(
        dest="toy_command", required=True, parser_class=_Parser)
    sp = toy.add_parser("train", help="train a toy model from scratch (plain torch, fixed seeds) and measure it")
    sp.add_argument("--size", required=True, choices=["toy-s", "toy-m", "toy-l"])
    sp.add_argument("--out", default=None, help="checkpoint folder (default: ./<size>)")
    sp.add_argument("--steps", type=int, default=None, help="override the schedule length (smoke tests)")
    sp.add_argument("--no-measure", action="store_true", help="skip measuring the card's properties")
    sp.add_argument("--p-collocation", type=float, default=None,
                    help="share of verbs fixed by the collocation table "
                         "(default 0.75, as since corpus v5; 0 is corpus v4)")
    sp.add_argument("--p-catalogue", type=float, default=None,
                    help="share of documents that are catalogue documents, a seeded table to store "
                         "(default 0.25: the shipped corpus v6; 0 is corpus v5)")
    sp.add_argument("--embed-std", type=float, default=None,
                    help="redraw the input embedding at this init std (default: the size's own: toy-l 0.5, the "
                         "others the Llama initialiser's 0.02; any value here redraws it)")
    sp.add_argument("--n-prompts", type=int, default=100)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_toy_train)
    sp = toy.add_parser("measure", help="re-measure a toy checkpoint's properties into its card")
    sp.add_argument("--model", required=True, help="toy-s|toy-m|toy-l (shipped) or a checkpoint folder")
    sp.add_argument("--n-prompts", type=int, default=100)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.set_defaults(func=cmd_toy_measure)
    sp = toy.add_parser("cards", help="the shipped cards' numbers as a Markdown table")
    sp.set_defaults(func=cmd_toy_cards)
    sp = toy.add_parser("sample", help="print documents of the toy language")
    sp.add_argument("-n", type=int, default=5)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_toy_sample)

    sp = sub.add_parser("report", help="self-contained HTML + Markdown report from a folder of results")
    sp.add_argument("results", help="folder holding workbench results (demo output, analysis result.json, ...)")
    sp.add_argument("--out", default=None, help="folder for report.html / report.md (default: the results folder)")
    sp.add_argument("--title", default="workbench report")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("demo", help="end-to-end run on the embedded default model")
    sp.add_argument("--out", default="demo_out")
    sp.add_argument("--model", default="toy-m", help="toy-s | toy-m | toy-l or a toy checkpoint folder")
    sp.add_argument("--n-prompts", type=int, default=48, help="steered prompts per cell")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: "Sequence[str] | None" = None) -> int:
    try:
        args = _parser().parse_args(argv)
        _quiet()
        return args.func(args)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's contract: one line, no traceback
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        kind = "error" if isinstance(e, (WorkbenchError, OSError)) else f"internal error ({type(e).__name__})"
        msg = " ".join(str(e).split()) or type(e).__name__
        msg = msg if len(msg) <= 600 else msg[:600] + " ..."
        print(f"workbench: {kind}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
