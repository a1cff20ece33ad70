"""Run llama.cpp's ``convert_hf_to_gguf.py`` with two compatibility fixes (a subprocess entry point).

    python -m workbench.export._convert CONVERTER [converter arguments...]

* the converter reads legacy config keys that transformers 5 does not write or keep (GPT-2 ``n_ctx``, GPT-NeoX
  ``rotary_pct``): keys of the folder's ``config.json`` the loaded config lost are put back, and the two legacy
  keys are derived from the config's own values (``n_positions``, ``partial_rotary_factor``).
* ``$WORKBENCH_LLAMA_PRE_TOKENIZER`` (e.g. ``gpt-2``) names the pre-tokenizer to record for a BPE tokenizer the
  converter does not recognise (it knows published tokenizers by a hash of their output). Logits on token ids do
  not depend on it; only llama.cpp's own tokenisation of text does. Unset, an unknown tokenizer is refused as
  llama.cpp refuses it.
"""

import json
import os
import runpy
import sys
from pathlib import Path


def _patch() -> None:
    from conversion import base

    load = base.ModelBase.load_hparams

    def load_hparams(dir_model, *args, **kwargs):
        config = load(dir_model, *args, **kwargs)
        raw = Path(dir_model) / "config.json"
        if isinstance(config, dict) and raw.is_file():
            for key, value in json.loads(raw.read_text(encoding="utf-8")).items():
                config.setdefault(key, value)
        if isinstance(config, dict) and config.get("model_type") == "gpt2":
            config.setdefault("n_ctx", config.get("n_positions"))
        if isinstance(config, dict) and config.get("model_type") == "gpt_neox":
            rope = config.get("rope_parameters") or {}
            config.setdefault("rotary_pct", rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
        return config

    base.ModelBase.load_hparams = staticmethod(load_hparams)
    pre = os.environ.get("WORKBENCH_LLAMA_PRE_TOKENIZER")
    if pre:
        known = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                return pre

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre


def main() -> None:
    converter = Path(sys.argv[1]).resolve()
    sys.path[:0] = [str(converter.parent), str(converter.parent / "gguf-py")]
    _patch()
    sys.argv = [str(converter), *sys.argv[2:]]
    runpy.run_path(str(converter), run_name="__main__")


if __name__ == "__main__":
    main()
