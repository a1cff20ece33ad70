"""The model worker: one thread does all model work, and greedy requests that arrive together share one batch.

torch is not async and hooks attach to the whole model, so every forward pass of the server runs on one worker
thread: generation batches and calls (``Engine.call``: directions, comparisons) queue for it in arrival order.

**Batching.** When a generation request reaches an idle worker, the worker keeps taking requests while they
arrive less than ``window_s`` apart, for at most ``max_wait_s`` (requests that arrive while a batch runs are
queued and taken together next), up to ``max_batch`` rows, and runs each group of them as one
``workbench.generate.generate`` call, streaming every step's tokens to their requests through ``on_step``.
Groups:

* greedy requests whose specs only add vectors (``AddDirection``) share one batch, whatever their steering:
  each steering entry becomes one ``AddDirection`` with a per-row scale, ``0.0`` on the rows that do not use it.
  ``x + 0.0 * v == x`` exactly for finite ``v``, and a row's adds run in the order its request lists them, so
  each row is steered exactly as the same request alone;
* greedy requests whose specs ablate or edit spectrally (no per-row form) share a batch with the requests of
  the same steering only;
* sampled requests (temperature > 0) with a ``seed`` run alone, so the seed reproduces their text; sampled
  requests without one share a batch with those of the same temperature and top_p.

A greedy batch of adds whose rows have streamed at most ``merge_tokens`` tokens each stops when such requests
are waiting and restarts with them: its rows first regenerate the tokens they already sent (checked equal, and
not sent again), so a burst that arrives over a few steps still shares one batch.

Rows are left-padded; the padding is masked and positions follow the attention mask, so another batch shape
changes a row's logits only by float rounding, and a greedy request's tokens equal its solo run's unless two
candidates tie within rounding (the tests check this token for token). A batch is split where a prompt plus
the batch's longest ``max_tokens`` would pass the model's context, and stops as soon as every request in it
has finished (EOS, its own ``max_tokens``, a stop string, or a closed connection).
"""

__all__ = ["Steer", "Job", "Engine", "solo_interventions", "batch_interventions"]

import concurrent.futures
import dataclasses
import queue
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from workbench.errors import WorkbenchError
from workbench.export.spec import Spec
from workbench.generate import generate
from workbench.interventions import AddDirection
from workbench.models import HookedModel, tokenizer_of


@dataclass(frozen=True, eq=False)
class Steer:
    """One steering entry of a request: the loaded spec ``name`` with its adds multiplied by ``scale``."""

    name: str
    spec: Spec
    scale: float = 1.0

    @property
    def additive(self) -> bool:
        return all(isinstance(iv, AddDirection) for iv in self.spec.interventions)


def solo_interventions(steering: Sequence[Steer]) -> list:
    """The interventions of one request, in its order: each spec's adds at ``scale`` x their saved strength,
    its ablations and spectral edits as saved."""
    out: list = []
    for st in steering:
        for iv in st.spec.interventions:
            if isinstance(iv, AddDirection):
                iv = dataclasses.replace(iv, scale=float(cast(float, iv.scale)) * st.scale)  # a spec's scale is scalar
            out.append(iv)
    return out


def batch_interventions(steerings: Sequence[Sequence[Steer]]) -> list[AddDirection]:
    """Per-row ``AddDirection``s that steer row ``i`` exactly as ``solo_interventions(steerings[i])`` does.

    Slot ``k`` holds every row's ``k``-th add; each distinct add there becomes one ``AddDirection`` whose scale
    is that row's strength on the rows using it and ``0.0`` elsewhere, so each row's adds run in its own order."""
    rows = [solo_interventions(s) for s in steerings]
    bases = [[base for st in s for base in st.spec.interventions] for s in steerings]
    out: list[AddDirection] = []
    for k in range(max((len(r) for r in rows), default=0)):
        slot: dict[int, tuple[AddDirection, list[float]]] = {}
        for i, (ivs, base) in enumerate(zip(rows, bases)):
            if k < len(ivs):
                if not isinstance(ivs[k], AddDirection):
                    raise WorkbenchError("batch_interventions takes adds only; run other edits in their own batch.")
                entry = slot.setdefault(id(base[k]), (base[k], [0.0] * len(rows)))
                entry[1][i] = float(ivs[k].scale)
        out += [dataclasses.replace(base, scale=tuple(scales)) for base, scales in slot.values()]
    return out


@dataclass(eq=False)
class Job:
    """One completion being generated: a prompt, its limits and steering, and where its tokens go.

    ``sink(event, value)`` is called from the worker thread: ``("token", id)`` for each generated token, then
    ``("done", "stop" | "length")`` or ``("error", message)``. Setting ``cancelled`` stops feeding the job."""

    prompt: str
    n_prompt_tokens: int
    max_tokens: int
    sink: Callable[[str, Any], None]
    steering: tuple[Steer, ...] = ()
    temperature: float = 0.0
    top_p: "float | None" = None
    seed: "int | None" = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)  # the tokens sent so far
    finished: bool = False
    arrived: float = field(default_factory=time.monotonic)

    def steering_key(self) -> tuple:
        return tuple((st.name, id(st.spec), st.scale) for st in self.steering)

    def _finish(self, event: str, value: Any) -> None:
        if not self.finished:
            self.finished = True
            self.sink(event, value)


def _mergeable(job: Job) -> bool:
    """Whether ``job`` can join a batch of other requests' rows at any time: greedy, and its specs only add."""
    return job.temperature == 0 and all(st.additive for st in job.steering)


class _Call:
    def __init__(self, fn: Callable[[HookedModel], Any]) -> None:
        self.fn, self.future = fn, concurrent.futures.Future()  # type: ignore[var-annotated]


class _GroupDone(Exception):
    """Raised from ``on_step`` when every job of a batch has finished: stops the batch early."""


class _Merge(Exception):
    """Raised from ``on_step`` to restart a young greedy batch together with requests that arrived since."""


_STOP = object()


class Engine:
    """The worker thread that owns ``model``: ``submit`` generation jobs, ``call`` any other model work."""

    def __init__(
        self,
        model: HookedModel,
        *,
        max_batch: int = 32,
        window_s: float = 0.005,
        max_wait_s: float = 0.05,
        max_queue: int = 1024,
        merge_tokens: int = 8,
    ) -> None:
        if max_batch < 1 or not 0 <= window_s <= max_wait_s <= 10 or max_queue < 1:
            raise WorkbenchError(
                f"need max_batch >= 1, 0 <= window_s <= max_wait_s <= 10, max_queue >= 1; got {max_batch}, "
                f"{window_s}, {max_wait_s}, {max_queue}."
            )
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.window_s, self.max_wait_s, self.merge_tokens = window_s, max_wait_s, merge_tokens
        self.n_ctx = int(model.cfg.n_ctx)
        self.eos = tokenizer_of(model).eos_token_id
        self._q: queue.Queue = queue.Queue()
        self._pending = 0
        self._pending_mergeable = 0  # queued greedy requests whose specs only add: they can join a running batch
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="workbench-model", daemon=True)
        self._stats: dict[str, Any] = {
            "batches": 0,
            "rows": 0,
            "max_rows": 0,
            "mixed_batches": 0,
            "calls": 0,
        }
        self._log: list[dict] = []  # the last 256 batches: rows, and steps once finished

    # -- public ---------------------------------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the work queued so far, then end the worker thread."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a generation job; raises ``WorkbenchError`` when ``max_queue`` jobs already wait."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise WorkbenchError(f"the server has {self._pending} requests queued; retry in a moment.")
            self._pending += 1
            self._pending_mergeable += _mergeable(job)
        self._q.put(job)

    def call(self, fn: Callable[[HookedModel], Any]) -> "concurrent.futures.Future":
        """Run ``fn(model)`` on the worker thread, after the work queued before it; returns its future."""
        c = _Call(fn)
        self._q.put(c)
        return c.future

    def stats(self) -> dict:
        with self._lock:
            s = dict(self._stats)
            s["rows_per_batch"] = [e["rows"] for e in self._log]
            s["steps_per_batch"] = [e["steps"] for e in self._log]
            s["queued"] = self._pending
        return s

    # -- worker ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        carry: list[Job] = []  # greedy jobs of a batch stopped to take in new arrivals, with their tokens so far
        while not stopping:
            jobs: list[Job] = list(carry)
            calls: list[_Call] = []
            carry = []
            if not jobs:
                item = self._q.get()
                stopping = self._take(item, jobs, calls)
                # a sliding window: wait while requests keep arriving (each gap up to window_s), at most
                # max_wait_s in all, so a burst of clients shares one batch and a lone request waits window_s
                start = time.monotonic()
                deadline = start + self.window_s
                while jobs and len(jobs) < self.max_batch and not stopping:
                    left = min(deadline, start + self.max_wait_s) - time.monotonic()
                    try:
                        nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                    except queue.Empty:
                        break
                    stopping = self._take(nxt, jobs, calls)
                    deadline = time.monotonic() + self.window_s
            else:
                while len(jobs) < self.max_batch and not stopping:
                    try:
                        stopping = self._take(self._q.get_nowait(), jobs, calls)
                    except queue.Empty:
                        break
            groups = self._plan(jobs)
            for k, group in enumerate(groups):
                carry = self._run_group(group)
                if carry:
                    carry += [j for g in groups[k + 1 :] for j in g]
                    break
            for c in calls:
                self._run_call(c)
        for j in carry:
            j._finish("error", "the server is shutting down; send the request again once it is back.")

    def _take(self, item: Any, jobs: list, calls: list) -> bool:
        if item is _STOP:
            return True
        if isinstance(item, Job):
            with self._lock:
                self._pending -= 1
                self._pending_mergeable -= _mergeable(item)
            jobs.append(item)
        else:
            calls.append(item)
        return False

    def _run_call(self, c: _Call) -> None:
        if not c.future.set_running_or_notify_cancel():
            return
        with self._lock:
            self._stats["calls"] += 1
        try:
            c.future.set_result(c.fn(self.model))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            c.future.set_exception(e)

    def _plan(self, jobs: list[Job]) -> list[list[Job]]:
        """Split ``jobs`` into the groups described in the module docstring, each fitting the context."""
        groups: dict[tuple, list[Job]] = {}
        for j in jobs:
            if j.cancelled:
                j._finish("done", "cancelled")
                continue
            steer = "add" if all(st.additive for st in j.steering) else j.steering_key()
            if j.temperature == 0:
                sampling: tuple = ("greedy",)
            elif j.seed is not None:
                sampling = ("seeded", id(j))
            else:
                sampling = ("sampled", j.temperature, j.top_p)
            groups.setdefault((sampling, steer), []).append(j)
        out = []
        for group in groups.values():
            group.sort(key=lambda j: j.n_prompt_tokens)
            current: list[Job] = []
            for j in group:
                longest = max([j.max_tokens, *(c.max_tokens for c in current)])
                if current and j.n_prompt_tokens + longest > self.n_ctx:
                    out.append(current)
                    current = []
                current.append(j)
            out.append(current)
        out.sort(key=lambda g: min(j.arrived for j in g))
        return out

    def _interventions(self, jobs: list[Job]) -> list:
        if all(st.additive for j in jobs for st in j.steering):
            if len({j.steering_key() for j in jobs}) == 1:
                return solo_interventions(jobs[0].steering)  # one steering for all rows: scalar strengths
            return batch_interventions([j.steering for j in jobs])
        return solo_interventions(jobs[0].steering)  # planned so that every row has this steering

    def _run_group(self, jobs: list[Job]) -> list[Job]:
        """Generate ``jobs`` as one batch; returns the unfinished jobs when the batch stopped to merge."""
        n = len(jobs)
        skip = [len(j.tokens) for j in jobs]  # a restarted row first regenerates the tokens it already sent
        counts = [0] * n
        entry = {"rows": n, "steps": 0}
        with self._lock:
            self._stats["batches"] += 1
            self._stats["rows"] += n
            self._stats["max_rows"] = max(self._stats["max_rows"], n)
            self._stats["mixed_batches"] += len({j.steering_key() for j in jobs}) > 1
            self._log.append(entry)
            del self._log[:-256]
        mergeable = n < self.max_batch and all(_mergeable(j) for j in jobs)

        def on_step(tokens: Any) -> None:
            progressed = False
            for i, j in enumerate(jobs):
                if j.finished:
                    continue
                if j.cancelled:
                    j._finish("done", "cancelled")
                    continue
                t = int(tokens[i])
                counts[i] += 1
                if counts[i] <= skip[i]:
                    if t != j.tokens[counts[i] - 1]:
                        with self._lock:
                            self._stats["restart_mismatches"] = self._stats.get("restart_mismatches", 0) + 1
                    continue
                if self.eos is not None and t == self.eos:
                    j._finish("done", "stop")
                    continue
                j.tokens.append(t)
                j.sink("token", t)
                progressed = True
                if counts[i] >= j.max_tokens:
                    j._finish("done", "length")
            if all(j.finished for j in jobs):
                raise _GroupDone
            # greedy rows restart exactly (their tokens equal a solo run's), so a batch that has streamed at
            # most merge_tokens tokens per row stops to take in requests that arrived meanwhile
            if mergeable and progressed and self._pending_mergeable > 0 and max(counts) <= self.merge_tokens:
                raise _Merge

        try:
            return self._generate(jobs, on_step)
        finally:
            with self._lock:
                entry["steps"] = max(counts)

    def _generate(self, jobs: list[Job], on_step: Callable[[Any], None]) -> list[Job]:
        first = jobs[0]
        try:
            generate(
                self.model,
                [j.prompt for j in jobs],
                *self._interventions(jobs),
                max_new_tokens=max(j.max_tokens for j in jobs),
                temperature=first.temperature,
                top_p=first.top_p,
                seed=first.seed if first.seed is not None else secrets.randbits(62),
                on_step=on_step,
            )
        except _GroupDone:
            pass
        except _Merge:
            with self._lock:
                self._stats["merges"] = self._stats.get("merges", 0) + 1
            return [j for j in jobs if not j.finished]
        except Exception as e:  # noqa: BLE001 - one failing batch must not stop the server
            message = str(e) if isinstance(e, WorkbenchError) else f"internal error: {type(e).__name__}: {e}"
            if not isinstance(e, WorkbenchError):
                traceback.print_exc()
            unfinished = [j for j in jobs if not j.finished]
            if len(jobs) > 1 and first.temperature == 0:
                # a greedy row's tokens equal its solo run's: rerun each alone, past the tokens it already sent
                carry: list[Job] = []
                for j in unfinished:
                    carry += self._run_group([j])
                return carry
            for j in unfinished:
                j._finish("error", message)
            return []
        for j in jobs:  # every row reached max_new_tokens or EOS; nothing is left unfinished
            j._finish("done", "length")
        return []
