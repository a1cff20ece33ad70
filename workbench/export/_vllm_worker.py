"""The process that runs vLLM for ``workbench.export.vllm``: started with the vLLM environment's Python (its own
venv: vLLM pins another transformers than the workbench), it imports nothing from the workbench.

It reads one JSON request per line on stdin and answers one JSON line on its own copy of stdout (everything vLLM
prints goes to stderr):

* ``{"op": "load", "model": DIR, "dtype": "float32", "max_model_len": N, "max_logprobs": K, "kv_cache_bytes": B}``:
  start an engine on the checkpoint folder (engines already started stay up: switching back costs nothing);
  answers ``{"ok": true, "seconds": S}``;
* ``{"op": "generate", "model": DIR, "dtype": "float32", "prompts": [[ids...], ...], "max_tokens": N,
  "logprobs": K}``: greedy continuations of the token-id prompts by that engine (EOS ignored, so every row has N
  tokens) with the top-K logprobs (plus the actual token's) at every prompt position after the first and every
  generated position; answers ``{"ok": true, "outputs": [{"tokens": [...], "logprobs": [[[token, logprob], ...]
  per position]}], "seconds": S}``;
* ``{"op": "quit"}``: exit at once (answers ``{"ok": true}`` first).

The engines run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one-process executor), so vLLM is imported
once and each further checkpoint costs about a second to start (small models).

A request that fails answers ``{"ok": false, "error": "<type>: <message>"}`` and the process keeps serving.
"""

import json
import os
import sys
import time

# run as a file, this folder would come first on sys.path and its vllm.py would shadow the vllm package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_OUT = sys.stdout


def _answer(obj: dict) -> None:
    _OUT.write(json.dumps(obj) + "\n")
    _OUT.flush()


def _positions(entries) -> list:
    out = []
    for pos in entries:
        if pos is None:  # the first prompt token has no distribution
            continue
        out.append([[int(t), float(lp.logprob)] for t, lp in pos.items()])
    return out


def main() -> None:
    global _OUT
    _OUT = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel
    os.dup2(2, 1)  # vLLM's own prints and logs go to stderr
    sys.stdout = sys.stderr
    from vllm import LLM, SamplingParams

    engines: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        if op == "quit":  # the engines live in this process only: nothing outside it to shut down
            _answer({"ok": True})
            os._exit(0)
        t0 = time.perf_counter()
        try:
            key = (req.get("model"), req.get("dtype", "float32"))
            if op == "load":
                if key not in engines:
                    engines[key] = LLM(
                        model=req["model"],
                        dtype=key[1],
                        enforce_eager=True,
                        distributed_executor_backend="uni",
                        max_model_len=req["max_model_len"],
                        max_logprobs=req.get("max_logprobs", 20),
                        kv_cache_memory_bytes=req.get("kv_cache_bytes", 256 << 20),
                        seed=0,
                    )
                _answer({"ok": True, "seconds": time.perf_counter() - t0})
            elif op == "generate":
                if key not in engines:
                    raise RuntimeError(f"no engine loaded for {key}")
                k = req.get("logprobs")
                params = SamplingParams(
                    temperature=0.0,
                    max_tokens=req["max_tokens"],
                    ignore_eos=True,
                    logprobs=k,
                    prompt_logprobs=k,
                    detokenize=False,
                )
                results = engines[key].generate(
                    [{"prompt_token_ids": ids} for ids in req["prompts"]], params, use_tqdm=False
                )
                outputs = []
                for r in results:
                    c = r.outputs[0]
                    lps = _positions(r.prompt_logprobs or []) + _positions(c.logprobs or []) if k is not None else []
                    outputs.append({"tokens": list(c.token_ids), "logprobs": lps})
                _answer({"ok": True, "outputs": outputs, "seconds": time.perf_counter() - t0})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - every failure is reported to the caller, which raises it
            _answer({"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
