"""The playground's work: pairs (a shipped toy set or an upload), directions with progress, steered comparisons
with their fluency cost, and saving / exporting the chosen cell.

All model work runs on the engine's worker thread. Uploaded pairs, computed directions and jobs live in memory
(the most recent ``KEEP`` of each). Specs are written into the spec directory; an upload is parsed, and an
export built, in the server's scratch folder and removed at once.

Fluency cost of a continuation (``compare``): its perplexity under the unsteered model, and the mean over its
tokens of KL(steered || unsteered) between the next-token distributions, both given the continuation so far.
"""

__all__ = ["Playground", "KEEP"]

import io
import math
import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from workbench import models
from workbench.activations import collect_pairs
from workbench.directions import DirectionSet, compute_directions
from workbench.errors import WorkbenchError
from workbench.export.spec import MANIFEST, TENSORS, Spec, spec_from_directions
from workbench.forward import batch_logits
from workbench.generate import generate_at_strengths
from workbench.hooks import applied
from workbench.interventions import AddDirection
from workbench.pairs import ContrastPairs, load_pairs
from workbench.positions import Positions
from workbench.schema import Scale, Strict
from workbench.serve.errors import ApiError
from workbench.serve.registry import SpecRegistry, check_name, describe
from workbench.sites import HookSite, layer_sites
from workbench.tokens import make_batch, pad_id_of, tokenize

KEEP = 16  # uploaded pairs sets, direction sets and jobs kept in memory (least recently used dropped)
BATCH = 32  # pairs' texts per forward while collecting activations
FORMATS = ("spec", "gguf", "hf-baked")


class DirectionsRequest(Strict):
    pairs: "str | None" = None
    pairs_set: "str | None" = None
    method: Literal["mean", "pca", "probe"] = "mean"
    position: Literal["last", "answer", "mean"] = "last"


class CompareRequest(Strict):
    directions: str
    layer: Annotated[int, Field(ge=0)]
    strengths: Annotated[list[Scale], Field(min_length=1, max_length=6)]
    positions: str = "all"
    prompts: Annotated[list[Annotated[str, Field(min_length=1, max_length=2000)]], Field(min_length=1, max_length=4)]
    max_tokens: Annotated[int, Field(ge=1, le=64)] = 24
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    seed: Annotated[int, Field(ge=0, le=2**31)] = 0


class SaveRequest(Strict):
    directions: str
    layer: Annotated[int, Field(ge=0)]
    strength: Scale
    positions: str = "all"
    name: str
    overwrite: bool = False


@dataclass(eq=False)
class _Task:
    id: str
    kind: str
    state: str = "queued"  # queued | running | done | error
    stage: str = "queued behind other work"
    progress: float = 0.0
    result: "dict | None" = None
    error: "str | None" = None
    started: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "state": self.state, "stage": self.stage, "progress": self.progress}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = {"message": self.error}
        return out


class _Counter:
    """An intervention that edits nothing and calls ``tick`` on every forward pass (at block 0's output)."""

    def __init__(self, tick: Any) -> None:
        self.tick = tick

    def to_hooks(self, model: Any, layout: Any = None) -> list:
        def count(x: torch.Tensor, hook: Any) -> torch.Tensor:
            self.tick()
            return x

        count.workbench_capture = True  # type: ignore[attr-defined]
        return [(HookSite(0, "resid_post").check(model), count)]


class _Lru(OrderedDict):
    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > KEEP:
            self.popitem(last=False)


def _positions(text: str) -> Positions:
    try:
        return Positions.parse(text)
    except WorkbenchError as e:
        raise ApiError(400, str(e), param="positions") from None


class Playground:
    """State and work behind the ``/api`` endpoints of one server."""

    def __init__(
        self, engine: Any, registry: SpecRegistry, model_name: str, work_dir: Path, max_upload_bytes: int
    ) -> None:
        self.engine, self.registry, self.model_name = engine, registry, model_name
        self.model = engine.model
        self.work_dir, self.max_upload_bytes = work_dir, max_upload_bytes
        self.pairs: _Lru = _Lru()
        self.directions: _Lru = _Lru()
        self.tasks: _Lru = _Lru()
        self._lock = threading.Lock()
        self.toy = (
            model_name in ("toy-s", "toy-m", "toy-l")
            or (Path(str(models.source_of(self.model) or "")) / "card.json").is_file()
        )

    # -- info ---------------------------------------------------------------------------------------------------

    def info(self, model_id: str, auth: bool) -> dict:
        c = self.model.cfg
        sets: list[dict] = []
        prompts = ["The"]
        if self.toy:
            from workbench.toy.measure import steer_prompts
            from workbench.toy.prompts import STEER_TARGETS

            for name, (source, target) in STEER_TARGETS.items():
                sets.append(
                    {
                        "name": name,
                        "label": f"{name}: {source} -> {target} (toy world, 200 minimal pairs)",
                        "prompts": [p.text for p in steer_prompts(name, source, 2, seed=1)],
                    }
                )
            prompts = sets[0]["prompts"]
        return {
            "model": model_id,
            "backend": models.backend_of(self.model),
            "n_layers": c.n_layers,
            "d_model": c.d_model,
            "n_ctx": c.n_ctx,
            "pairs_sets": sets,
            "prompts": prompts,
            "max_upload_bytes": self.max_upload_bytes,
            "formats": list(FORMATS),
            "auth": auth,
            "spec_dir": str(self.registry.folder),
        }

    # -- pairs --------------------------------------------------------------------------------------------------

    def upload(self, data: bytes, filename: str) -> dict:
        """Validate an uploaded pairs file (JSONL or a JSON array) and keep it; errors name the line."""
        shown = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:64] or "upload.jsonl"
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            path = Path(tmp) / "pairs.jsonl"
            path.write_bytes(data)
            try:
                pairs = load_pairs(path)
            except WorkbenchError as e:
                raise ApiError(400, str(e).replace(str(path), shown), param="file") from None
        if len(pairs) < 2:
            raise ApiError(400, f"{shown} holds {len(pairs)} pair; directions need at least 2 pairs.", param="file")
        pid = uuid.uuid4().hex[:16]
        with self._lock:
            self.pairs.put(pid, (shown, pairs))
        return {"pairs": pid, "name": shown, "n_pairs": len(pairs)}

    def _pairs_for(self, req: DirectionsRequest) -> tuple[str, ContrastPairs]:
        if (req.pairs is None) == (req.pairs_set is None):
            raise ApiError(
                400,
                "send exactly one of pairs (the id an upload returned) and pairs_set (a shipped set's name).",
                param="pairs_set",
            )
        if req.pairs_set is not None:
            from workbench.toy.prompts import STEER_TARGETS, contrast_pairs

            if not self.toy or req.pairs_set not in STEER_TARGETS:
                have = ", ".join(STEER_TARGETS) if self.toy else "none: this model is not a toy model, upload pairs"
                raise ApiError(404, f"no shipped pairs set {req.pairs_set!r} (sets: {have}).", param="pairs_set")
            source, target = STEER_TARGETS[req.pairs_set]
            return f"toy:{req.pairs_set}", contrast_pairs(req.pairs_set, target, source, n=200, seed=0)
        with self._lock:
            got = self.pairs.get(req.pairs)
        if got is None:
            raise ApiError(
                404,
                f"no uploaded pairs {req.pairs!r} (uploads are kept for {KEEP}); upload the file again.",
                param="pairs",
            )
        return got

    # -- directions ---------------------------------------------------------------------------------------------

    def start_directions(self, req: DirectionsRequest) -> dict:
        source, pairs = self._pairs_for(req)
        task = _Task(uuid.uuid4().hex[:16], "directions")
        with self._lock:
            self.tasks.put(task.id, task)
        n_batches = max(1, math.ceil(2 * len(pairs) / BATCH))

        done = [0]

        def tick() -> None:
            done[0] = min(n_batches, done[0] + 1)
            task.progress = 0.9 * done[0] / n_batches
            task.stage = f"collecting activations: batch {done[0]} of {n_batches} ({len(pairs)} pairs)"

        def run(model: Any) -> None:
            task.state, task.stage = "running", f"collecting activations: batch 0 of {n_batches} ({len(pairs)} pairs)"
            try:
                sites = layer_sites(model, None, "resid_post")
                with applied(model, _Counter(tick)):
                    acts = collect_pairs(model, pairs, sites, position=req.position, batch_size=BATCH, progress=False)
                task.stage, task.progress = f"fitting {req.method} directions at {len(sites)} layers", 0.9
                ds = compute_directions(acts, req.method, seed=0)
            except Exception as e:  # noqa: BLE001 - reported on the job, the worker goes on
                task.state = "error"
                task.error = str(e) if isinstance(e, WorkbenchError) else f"internal error: {type(e).__name__}: {e}"
                return
            did = uuid.uuid4().hex[:16]
            with self._lock:
                self.directions.put(did, (source, ds))
            task.result = {
                "directions": did,
                "source": source,
                "method": ds.method,
                "position": ds.position,
                "n_pairs": ds.n_pairs,
                "layers": [{"layer": d.site.layer, **d.quality.to_dict()} for d in ds.directions],
            }
            task.state, task.stage, task.progress = (
                "done",
                f"{len(ds.directions)} directions from {ds.n_pairs} pairs",
                1.0,
            )

        self.engine.call(run)
        return task.to_dict()

    def task(self, tid: str) -> dict:
        with self._lock:
            task = self.tasks.get(tid)
        if task is None:
            raise ApiError(404, f"no job {tid!r} (the last {KEEP} are kept); start it again.", param="job")
        return task.to_dict()

    def _directions(self, did: str) -> tuple[str, DirectionSet]:
        with self._lock:
            got = self.directions.get(did)
        if got is None:
            raise ApiError(
                404,
                f"no directions {did!r} (the last {KEEP} computed are kept); compute them again.",
                param="directions",
            )
        return got

    # -- comparing strengths ------------------------------------------------------------------------------------

    def compare(self, req: CompareRequest) -> Any:
        """Work for the worker: unsteered and steered continuations of each prompt with their fluency cost."""
        _, ds = self._directions(req.directions)
        d = self._at(ds, req.layer)
        positions = _positions(req.positions)
        strengths = [0.0, *req.strengths]

        def run(model: Any) -> dict:
            try:
                base = AddDirection(d.site, d.vector, 1.0, positions)
                gens = generate_at_strengths(
                    model,
                    list(req.prompts),
                    base,
                    strengths,
                    max_new_tokens=req.max_tokens,
                    temperature=req.temperature,
                    seed=req.seed,
                    return_logits=True,
                )
                columns = []
                for s, g in zip(strengths, gens):
                    rows = _fluency(model, list(req.prompts), g)
                    scored = [r for r in rows if r["perplexity"] is not None]
                    columns.append(
                        {
                            "strength": s,
                            "rows": rows,
                            "perplexity": _mean([r["perplexity"] for r in scored]),
                            "kl": _mean([r["kl"] for r in scored]),
                        }
                    )
            except WorkbenchError as e:
                raise ApiError(400, str(e)) from None
            return {"layer": req.layer, "positions": positions.to_dict(), "columns": columns}

        return run

    def _at(self, ds: DirectionSet, layer: int) -> Any:
        try:
            return ds.at(layer)
        except WorkbenchError as e:
            raise ApiError(400, str(e), param="layer") from None

    # -- saving and exporting -----------------------------------------------------------------------------------

    def save(self, req: SaveRequest) -> dict:
        """Write the chosen cell as spec ``req.name`` into the spec directory and load it."""
        source, ds = self._directions(req.directions)
        self._at(ds, req.layer)
        path = self.registry.path_of(req.name)
        if path.exists() and not req.overwrite:
            raise ApiError(
                409,
                f"spec {req.name!r} already exists in the spec directory; choose another name or send overwrite: true.",
                param="name",
            )
        try:
            spec = spec_from_directions(
                ds, [req.layer], float(req.strength), positions=_positions(req.positions), source=f"playground:{source}"
            )
        except WorkbenchError as e:
            raise ApiError(400, str(e)) from None
        spec.save(path)
        self.registry.load(req.name)
        return {
            "spec": describe(req.name, spec),
            "downloads": {f: f"/api/specs/{req.name}/download?format={f}" for f in FORMATS},
        }

    def export(self, name: str, fmt: str) -> tuple[bytes, str, str]:
        """``(content, media type, file name)`` of spec ``name`` exported as ``fmt``."""
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.", param="format")
        path = self.registry.path_of(check_name(name))
        if not (path / MANIFEST).is_file():
            raise ApiError(404, f"there is no spec {name!r} in the spec directory; save it first.", param="name")
        if fmt == "spec":
            return _zip({f"{name}/{f}": path / f for f in (MANIFEST, TENSORS)}), "application/zip", f"{name}.zip"
        try:
            spec = Spec.load(path, self.model)
            with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
                if fmt == "gguf":
                    from workbench.export.gguf import write_gguf

                    out = write_gguf(spec, Path(tmp) / f"{name}.gguf")
                    return out.read_bytes(), "application/octet-stream", f"{name}.gguf"
                from workbench.export.bake import bake_hf

                source = models.source_of(self.model)
                if source is None:
                    raise ApiError(
                        400,
                        "the served model was loaded by TransformerLens name, so there is no checkpoint folder to bake "
                        "into; serve a local checkpoint folder, or download the spec or GGUF.",
                        param="format",
                    )
                folder = bake_hf(spec, source, Path(tmp) / name)
                files = {f"{name}/{p.relative_to(folder)}": p for p in sorted(folder.rglob("*")) if p.is_file()}
                return _zip(files), "application/zip", f"{name}-baked.zip"
        except WorkbenchError as e:
            raise ApiError(400, f"cannot export spec {name!r} as {fmt}: {e}", param="format") from None

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _zip(files: "dict[str, Path]") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for arcname, p in files.items():
            z.write(p, arcname)
    return buf.getvalue()


def _mean(xs: list) -> "float | None":
    return sum(xs) / len(xs) if xs else None


def _fluency(model: Any, prompts: list[str], g: Any) -> list[dict]:
    """Each row's text with its perplexity under the unsteered model and its mean KL(steered || unsteered)."""
    prompt_ids = [tokenize(model, p) for p in prompts]
    seqs = [p + list(t) for p, t in zip(prompt_ids, g.tokens)]
    with torch.no_grad():
        logits = batch_logits(model, make_batch(seqs, pad_id_of(model), "right")).float().cpu()
    rows = []
    for i, (p, t) in enumerate(zip(prompt_ids, g.tokens)):
        n = len(t)
        if n == 0:
            rows.append({"prompt": prompts[i], "text": g.texts[i], "perplexity": None, "kl": None})
            continue
        plain = logits[i, len(p) - 1 : len(p) - 1 + n].log_softmax(-1)
        steered = g.logits[i, :n].float().log_softmax(-1)
        nll = -plain.gather(-1, torch.tensor(t)[:, None]).squeeze(-1)
        kl = (steered.exp() * (steered - plain)).sum(-1).clamp_min(0.0)
        rows.append(
            {
                "prompt": prompts[i],
                "text": g.texts[i],
                "perplexity": round(math.exp(float(nll.mean())), 4),
                "kl": round(float(kl.mean()), 5),
            }
        )
    return rows
