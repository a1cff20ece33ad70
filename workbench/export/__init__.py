"""Portable export of interventions for deployment.

* ``spec``: the workbench's own format (versioned JSON manifest + safetensors), checked against the model on load;
* ``gguf``: llama.cpp control vectors (export, and import of repeng / llama.cpp files);
* ``bake``: a Hugging Face checkpoint with the edit folded into its weights;
* ``apply_hf``: an applier for plain transformers models (no TransformerLens; the spec schema from ``manifests``);
* ``llamacpp`` / ``vllm`` / ``parity``: run the deployed forms (llama.cpp, vLLM serving the baked checkpoint) and
  compare them with the TransformerLens-steered model;
* ``support``: which formats hold an edit for a model family (``workbench info``).

Submodules are imported on first use, so ``workbench.export.apply_hf`` stays free of TransformerLens.
"""

import importlib

__all__ = ["spec", "gguf", "bake", "apply_hf", "llamacpp", "vllm", "parity", "support"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"workbench.export.{name}")
    raise AttributeError(f"module 'workbench.export' has no attribute {name!r}")
