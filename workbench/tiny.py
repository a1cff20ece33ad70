"""Tiny random Hugging Face checkpoints of every supported decoder family, with a word-level tokenizer.

They make the real loading path testable offline: a checkpoint written here loads through
``workbench.models.load(folder)`` exactly as a downloaded one would. Weights are random (seeded), so they are for
tests, the plumbing demo and speed benchmarks, never for behaviour.

Each family (``FAMILIES``) is built from its transformers config class with the features that matter for
exactness switched on where the family has them (grouped-query attention, tied embeddings, rope scaling, biases,
sliding windows, soft-capping, mixture of experts), and with its tokenizer's BOS convention: ``"bos"`` (the
tokenizer prepends one, as SentencePiece Llama/Mistral/Gemma do), ``"no-bos"`` (a BOS token exists but is not
added: GPT-2, Pythia, OLMo, Phi) or ``"none"`` (no BOS token at all: Qwen).
"""

__all__ = ["TINY_WORDS", "FAMILIES", "Family", "write_tokenizer", "write_tiny_checkpoint"]

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from workbench.io import atomic_dir

#: A small closed vocabulary; every word is one token.
TINY_WORDS: tuple[str, ...] = tuple(
    "the a this that cat dog bird fish car bus tree house sun moon sky sea "
    "is was sees likes runs sleeps eats good bad happy sad big small red blue green "
    "very not and or but . , ? ! ( ) A B yes no i you we they love hate question answer".split()
)
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
BosConvention = Literal["bos", "no-bos", "none"]

#: A minimal chat template (user / assistant turns) for tests of ``--chat-template``.
CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@dataclass(frozen=True)
class Family:
    """How to build one architecture: its transformers config/model class names, config overrides, BOS rule."""

    config_class: str
    model_class: str
    overrides: dict = field(default_factory=dict)
    bos: BosConvention = "bos"
    tokenizer: Literal["word", "bpe"] = "word"


def _rope_llama3(theta: float = 500000.0) -> dict:
    return {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }


#: Every family the workbench is tested on. Keys are the names tests and the architecture matrix use.
FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM"),
    "llama3": Family(
        "LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True, "rope_parameters": _rope_llama3()}
    ),
    "llama-bias": Family("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    "mistral": Family("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mixtral": Family(
        "MixtralConfig",
        "MixtralForCausalLM",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    ),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", {}, bos="none", tokenizer="bpe"),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", {}, bos="none", tokenizer="bpe"),
    "qwen3-moe": Family(
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": "d_mlp", "norm_topk_prob": True},
        bos="none",
        tokenizer="bpe",
    ),
    "gemma": Family("GemmaConfig", "GemmaForCausalLM", {"head_dim": "d_head", "tie_word_embeddings": True}),
    "gemma2": Family(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"head_dim": "d_head", "query_pre_attn_scalar": "d_head", "sliding_window": 16, "tie_word_embeddings": True},
    ),
    "gemma3": Family(
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"head_dim": "d_head", "query_pre_attn_scalar": "d_head", "sliding_window": 16, "tie_word_embeddings": True},
    ),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "phi": Family("PhiConfig", "PhiForCausalLM", {}, bos="no-bos", tokenizer="bpe"),
    "gpt-neox": Family("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.5}, bos="no-bos", tokenizer="bpe"),
    "gpt2": Family("GPT2Config", "GPT2LMHeadModel", {}, bos="no-bos", tokenizer="bpe"),
    "opt": Family("OPTConfig", "OPTForCausalLM", {}),
    "olmo": Family("OlmoConfig", "OlmoForCausalLM", {}, bos="no-bos", tokenizer="bpe"),
    "olmo2": Family("Olmo2Config", "Olmo2ForCausalLM", {}, bos="no-bos", tokenizer="bpe"),
}


def _bpe(words: "tuple[str, ...]"):
    """A byte-level BPE (GPT-2 / Qwen style) trained so that every word, with or without a leading space, is one
    token. Tokenizer classes that rebuild a byte-level BPE from ``vocab`` + ``merges`` (Qwen2) read it as is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [" ".join(words), *(f" {w}" for w in words), *words]
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=list(_SPECIALS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(corpus * 2, trainer)
    return tk


def write_tokenizer(
    folder: "str | Path",
    words: "tuple[str, ...]" = TINY_WORDS,
    *,
    bos: BosConvention = "bos",
    kind: Literal["word", "bpe"] = "word",
    chat_template: bool = False,
) -> int:
    """Save a tokenizer into ``folder``, prepending ``<bos>`` or not as ``bos`` says: whitespace word-level
    (``kind="word"``, one token per word) or byte-level BPE (``"bpe"``). Returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tk = _bpe(words)
        vocab = tk.get_vocab()
    else:
        vocab = {w: i for i, w in enumerate(_SPECIALS + tuple(words))}
        tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if bos == "bos":
        tk.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=None if bos == "none" else "<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=bos == "bos",
        model_max_length=128,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return len(vocab)


def _config(
    family: Family,
    *,
    vocab_size: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    d_mlp: int,
    n_ctx: int,
):
    import transformers

    ids = {"pad_token_id": 0, "bos_token_id": None if family.bos == "none" else 1, "eos_token_id": 2}
    d_head = d_model // n_heads
    sizes_by_config: dict[str, dict[str, Any]] = {
        # GPT-2 and Phi-2 as published (and as llama.cpp's converter assumes): MLP 4 x d_model, no grouped KV
        "GPT2Config": dict(n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx, n_inner=None),
        "OPTConfig": dict(
            hidden_size=d_model,
            ffn_dim=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            max_position_embeddings=n_ctx,
            word_embed_proj_dim=d_model,
        ),
        "PhiConfig": dict(
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads,
            max_position_embeddings=n_ctx,
            partial_rotary_factor=0.5,
        ),
        "GPTNeoXConfig": dict(
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            max_position_embeddings=n_ctx,
        ),
    }
    sizes = sizes_by_config.get(
        family.config_class,
        dict(
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            max_position_embeddings=n_ctx,
            tie_word_embeddings=False,
        ),
    )
    extra = {
        k: {"d_head": d_head, "d_mlp": d_mlp}.get(v, v) if isinstance(v, str) else v
        for k, v in family.overrides.items()
    }
    return getattr(transformers, family.config_class)(vocab_size=vocab_size, **{**sizes, **ids, **extra})


def write_tiny_checkpoint(
    folder: "str | Path",
    arch: str = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_kv_heads: "int | None" = None,
    d_mlp: "int | None" = None,
    n_ctx: int = 128,
    seed: int = 0,
    dtype: "torch.dtype | None" = None,
    max_shard_size: "str | None" = None,
    chat_template: bool = False,
    tokenizer_from: "str | Path | None" = None,
) -> Path:
    """Write a random checkpoint of family ``arch`` (a key of ``FAMILIES``) with the tiny tokenizer to ``folder``
    (atomically) and return it. ``dtype`` saves in another precision, ``max_shard_size`` shards the safetensors;
    ``tokenizer_from`` copies another checkpoint's tokenizer files instead (e.g. a SentencePiece tokenizer, which
    llama.cpp's converter reads for every family)."""
    if arch not in FAMILIES:
        raise ValueError(f"arch must be one of {', '.join(FAMILIES)}; got {arch!r}.")
    family = FAMILIES[arch]
    with atomic_dir(folder) as tmp:
        if tokenizer_from is not None:
            import shutil

            from transformers import AutoTokenizer

            for f in Path(tokenizer_from).iterdir():
                if f.name.startswith(("tokenizer", "special_tokens")):
                    shutil.copy2(f, tmp / f.name)
            vocab_size = len(AutoTokenizer.from_pretrained(str(tmp)))
        else:
            vocab_size = write_tokenizer(tmp, bos=family.bos, kind=family.tokenizer, chat_template=chat_template)
        _write_model(
            tmp,
            family,
            vocab_size,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_mlp=d_mlp,
            n_ctx=n_ctx,
            seed=seed,
            dtype=dtype,
            max_shard_size=max_shard_size,
        )
    return Path(folder)


def _write_model(
    tmp: Path,
    family: Family,
    vocab_size: int,
    *,
    n_layers,
    d_model,
    n_heads,
    n_kv_heads,
    d_mlp,
    n_ctx,
    seed,
    dtype,
    max_shard_size,
) -> None:
    import transformers

    cfg = _config(
        family,
        vocab_size=vocab_size,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads or n_heads,
        d_mlp=d_mlp or 2 * d_model,
        n_ctx=n_ctx,
    )
    # transformers initialises from the global RNG: seed it for this call only, then restore it.
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = getattr(transformers, family.model_class)(cfg).eval()
        with torch.no_grad():  # larger-than-default weights so layers actually mix (random init is near-identity)
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, 0.9 / p.shape[-1] ** 0.5)
                elif p.ndim == 1 and "bias" in name:
                    p.normal_(0.0, 0.1)
    finally:
        torch.random.set_rng_state(state)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(tmp), **({"max_shard_size": max_shard_size} if max_shard_size else {}))
