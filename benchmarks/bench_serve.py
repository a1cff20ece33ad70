"""`workbench serve` under load: 32 concurrent greedy requests with mixed per-request steering (4 specs and
unsteered, batched into one forward per step) vs the same 32 requests unsteered (target >= 0.95x tokens/s), vs
the same requests sent one at a time; and time to first token, idle and under the 32-request load.

The server runs as its own process (`workbench serve`, as users start it) on the benchmark Llama of
`_common.py`, with four specs of random directions at different layers; the clients are asyncio + httpx in this
process, on loopback. Alternating repetitions, medians.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import httpx  # noqa: E402
from _common import SIZE  # noqa: E402

from workbench import models  # noqa: E402
from workbench.export.spec import Spec  # noqa: E402
from workbench.interventions import AddDirection  # noqa: E402
from workbench.sites import HookSite  # noqa: E402
from workbench.tiny import write_tiny_checkpoint  # noqa: E402

N, NEW = 32, 32
REPS = int(os.environ.get("BENCH_REPS", 5))
WORDS = "the cat sees a big dog and we love the blue sea but this small red car is very happy".split()
PROMPTS = [" ".join(WORDS[i % 7 : i % 7 + 3 + i % 5]) for i in range(N)]
SPECS = ["s0", "s1", "s2", "s3"]


def _setup(root: Path) -> "tuple[Path, Path]":
    folder = root / "llama"
    write_tiny_checkpoint(folder, "llama", **SIZE)
    # EOS's unembedding row is zeroed: its logit 0 never beats the largest of the others, so every request
    # generates exactly NEW tokens whatever its steering, and the runs compare equal work
    weights = load_file(folder / "model.safetensors")
    eos = AutoTokenizer.from_pretrained(str(folder)).eos_token_id
    weights["lm_head.weight"][eos] = 0.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model = models.load(folder)
    fp = models.fingerprint(model)
    gen = torch.Generator().manual_seed(0)
    for i, name in enumerate(SPECS):
        v = torch.randn(model.cfg.d_model, generator=gen)
        Spec((AddDirection(HookSite(1 + 2 * i), v / v.norm() * 4, 1.0),), fp).save(root / "specs" / name)
    return folder, root / "specs"


def _body(model: str, i: int, steered: bool, stream: bool = False) -> dict:
    body = {"model": model, "prompt": PROMPTS[i], "max_tokens": NEW, "temperature": 0, "stream": stream}
    if steered and i % 5 != 4:
        body["steering"] = {"spec": SPECS[i % 5 % 4], "scale": (1.0, 2.0, -1.0, 0.5)[i % 4]}
    return body


async def _one(c: httpx.AsyncClient, body: dict) -> "tuple[int, float]":
    """(completion tokens, seconds to the first text) of one request."""
    t0 = time.perf_counter()
    if not body["stream"]:
        r = await c.post("/v1/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], float("nan")
    first, tokens = float("nan"), 0
    async with c.stream("POST", "/v1/completions", json={**body, "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and first != first:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_PID = 0


async def _run(
    url: str, model: str, steered: bool, concurrent: bool, stream: bool = False
) -> "tuple[float, int, list, list, float]":
    """Wall seconds, completion tokens, first-token times, the server's batch sizes and its CPU seconds."""
    limits = httpx.Limits(max_connections=N + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, trust_env=False) as c:
        before = (await c.get("/api/stats")).json()["batches"]
        cpu0 = _cpu_seconds(SERVER_PID)
        t0 = time.perf_counter()
        if concurrent:
            got = await asyncio.gather(*(_one(c, _body(model, i, steered, stream)) for i in range(N)))
        else:
            got = [await _one(c, _body(model, i, steered, stream)) for i in range(N)]
        wall = time.perf_counter() - t0
        cpu = _cpu_seconds(SERVER_PID) - cpu0
        stats = (await c.get("/api/stats")).json()
        batches = stats["rows_per_batch"][len(stats["rows_per_batch"]) - (stats["batches"] - before) :]
        return wall, sum(t for t, _ in got), [f for _, f in got], batches, cpu


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="wb-bench-serve-"))
    folder, specs = _setup(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "workbench", "serve", "--model", str(folder), "--specs", str(specs)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    global SERVER_PID
    SERVER_PID = proc.pid
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        model = httpx.get(f"{url}/v1/models", trust_env=False).json()["data"][0]["id"]
        run = lambda *a: asyncio.run(_run(url, model, *a))  # noqa: E731
        run(True, True)  # warm-up
        mixed, plain = [], []
        for rep in range(REPS):  # alternating order, so drift and noise hit both sides alike
            for steered in (True, False) if rep % 2 == 0 else (False, True):
                (mixed if steered else plain).append(run(steered, True))
        serial = [run(True, False) for _ in range(2)]
        idle = [asyncio.run(_run_one_stream(url, model)) for _ in range(REPS)]
        loaded = run(True, True, True)
        merges = httpx.get(f"{url}/api/stats", trust_env=False).json().get("merges", 0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def rate(runs: list) -> float:
        return statistics.median(run[1] / run[0] for run in runs)

    assert {t for run in mixed + plain + serial for t in [run[1]]} == {N * NEW}, "every request makes NEW tokens"
    m, p, s = rate(mixed), rate(plain), rate(serial)
    ratio = statistics.median(p[0] / m[0] for m, p in zip(mixed, plain))
    cpu_ratio = statistics.median(p[4] / m[4] for m, p in zip(mixed, plain))
    print(f"## serve: {N} concurrent greedy requests x {NEW} new tokens, per-request steering ({REPS} reps)")
    print(f"model: random Llama {SIZE}, backend {models.default_backend()}, server process `workbench serve`")
    print(f"mixed steering (4 specs + unsteered)  {m:8.1f} tok/s  batches {sorted({tuple(r[3]) for r in mixed})}")
    print(f"same requests unsteered               {p:8.1f} tok/s  batches {sorted({tuple(r[3]) for r in plain})}")
    print(f"mixed, one request at a time          {s:8.1f} tok/s")
    print(
        f"ratio mixed/unsteered = {ratio:.3f}x wall, {cpu_ratio:.3f}x server CPU time (median of the {REPS} "
        f"side-by-side pairs; target >= 0.95x)"
    )
    print(f"ratio batched/one-at-a-time = {m / s:.2f}x; batches restarted to take in late arrivals: {merges}")
    print(
        f"time to first token: idle {1000 * statistics.median(idle):.0f} ms, under the {N}-request load "
        f"median {1000 * statistics.median(loaded[2]):.0f} ms, max {1000 * max(loaded[2]):.0f} ms"
    )


async def _run_one_stream(url: str, model: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as c:
        _, first = await _one(c, _body(model, 0, True, True))
        return first


if __name__ == "__main__":
    main()
