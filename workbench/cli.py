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

    return models.load(args.model, backend=args.backend)


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
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_directions(args) -> int:
    from workbench import models
    from workbench.activations import collect_pairs
    from workbench.directions import compute_directions
    from workbench.pairs import load_pairs
    from workbench.sites import layer_sites

    pairs = load_pairs(args.pairs)  # validate the cheap inputs before loading a model
    if Path(args.out).exists() and not args.overwrite:
        raise WorkbenchError(f"--out {args.out!r} already exists; remove it or pass --overwrite.")
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


def cmd_demo(args) -> int:
    from workbench.demo import run_demo

    out = run_demo(args.out, backend=args.backend)
    print((out / "summary.md").read_text())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(sp):
        sp.add_argument("--model", required=True, help="TransformerLens name, local HF folder or toy name")
        sp.add_argument("--backend", choices=["bridge", "hooked"], default=None,
                        help="TransformerBridge (TL 4.x) or HookedTransformer (TL 3.x); default: the installed one")

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

    sp = sub.add_parser("demo", help="end-to-end run on the embedded default model")
    sp.add_argument("--out", default="demo_out")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
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
