"""repeng, driven by ``bench_peers.py`` from its own venv (.venv/repeng: repeng pins numpy < 2).

Reads one JSON command per line on stdin and answers one JSON line on stdout:

* ``{"load": folder, "layer": L, "vector": [...], "tokens": [[...]], "mask": [[...]], "new": N, "pad": id}``
  loads the checkpoint and wraps it in ``repeng.ControlModel`` at block L;
* ``{"run": coeffs}``: greedy ``generate`` of the loaded batch once per coefficient (``set_control`` each time),
  timed; answers ``{"seconds": s, "tokens": [[[...]]]}`` (one batch of new tokens per coefficient);
* ``{"quit": true}``.
"""

import json
import sys
import time

import numpy as np
import torch
from repeng import ControlModel, ControlVector
from transformers import AutoModelForCausalLM

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
state: dict = {}
for line in sys.stdin:
    cmd = json.loads(line)
    if "quit" in cmd:
        break
    if "load" in cmd:
        hf = AutoModelForCausalLM.from_pretrained(cmd["load"], dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None  # run every row to N new tokens, as the other paths do
        layer = cmd["layer"]
        state = {
            "model": ControlModel(hf, [layer]),
            "vector": ControlVector(hf.config.model_type, {layer: np.asarray(cmd["vector"], dtype=np.float32)}),
            "tokens": torch.tensor(cmd["tokens"]),
            "mask": torch.tensor(cmd["mask"]),
            "new": cmd["new"],
            "pad": cmd["pad"],
        }
        print(json.dumps({"ok": True}), flush=True)
        continue
    s, out = state, []
    t = time.perf_counter()
    with torch.no_grad():
        for coeff in cmd["run"]:
            s["model"].set_control(s["vector"], coeff)
            ids = s["model"].generate(
                input_ids=s["tokens"],
                attention_mask=s["mask"],
                max_new_tokens=s["new"],
                do_sample=False,
                pad_token_id=s["pad"],
            )
            out.append(ids[:, s["tokens"].shape[1] :].tolist())
    seconds = time.perf_counter() - t
    s["model"].reset()
    print(json.dumps({"seconds": seconds, "tokens": out}), flush=True)
