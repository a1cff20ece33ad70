"""Which deployment formats can hold an edit for a given model family, and why not where they cannot.

One place that answers for ``workbench info`` what the exporters themselves enforce: ``apply_hf``'s layouts,
llama.cpp's converter coverage (``gguf.NO_LLAMACPP``) and the baking rules (``bake.bake_support``).
"""

__all__ = ["formats"]


def formats(model_type: str, architecture: str) -> dict[str, str]:
    """``{"spec", "gguf", "hf-baked"}`` -> what each format holds for this family, or ``"refused: <reason>"``."""
    from workbench.export import apply_hf
    from workbench.export.bake import AS_LLAMA, bake_support
    from workbench.export.gguf import NO_LLAMACPP

    if model_type not in apply_hf.LAYOUTS:
        spec = "the workbench only (apply_hf has no layout for this family)"
    elif model_type in apply_hf.EVERY_SITE:
        spec = "every site (apply_hf too)"
    else:
        spec = "every site in the workbench; apply_hf: block inputs and outputs (resid_pre, resid_post)"
    gguf = (
        f"refused: {NO_LLAMACPP[architecture]}"
        if architecture in NO_LLAMACPP
        else "adds at block outputs 1..n_layers-1, every position"
    )
    why = bake_support(model_type)
    baked = (
        "adds at every site, ablation everywhere, linear SEA at mlp_out"
        if model_type in ("llama", "gpt2")
        else "adds at every site (rewritten as Llama with biases; refused with sliding-window attention)"
        if model_type in AS_LLAMA
        else "adds at block outputs"
        if why is None
        else f"refused: {why.split('. Deploy')[0]}"
    )
    return {"spec": spec, "gguf": gguf, "hf-baked": baked}
