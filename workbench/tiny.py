"""Tiny random Hugging Face checkpoints (Llama and GPT-2) with a word-level tokenizer, written to a folder.

They make the real loading path testable offline: a checkpoint written here loads through
``workbench.models.load(folder)`` exactly as a downloaded one would. Weights are random (seeded), so they are for
tests, the plumbing demo and speed benchmarks, never for behaviour.
"""

__all__ = ["TINY_WORDS", "write_tokenizer", "write_tiny_checkpoint"]

from pathlib import Path
from typing import Literal

import torch

from workbench.io import atomic_dir

#: A small closed vocabulary; every word is one token.
TINY_WORDS: tuple[str, ...] = tuple(
    "the a this that cat dog bird fish car bus tree house sun moon sky sea "
    "is was sees likes runs sleeps eats good bad happy sad big small red blue green "
    "very not and or but . , ? ! ( ) A B yes no i you we they love hate question answer".split()
)
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def write_tokenizer(folder: "str | Path", words: "tuple[str, ...]" = TINY_WORDS) -> None:
    """Save a whitespace word-level tokenizer that prepends ``<bos>`` into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_SPECIALS + tuple(words))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, model_max_length=128,
    )
    tok.save_pretrained(str(folder))


def write_tiny_checkpoint(
    folder: "str | Path",
    arch: Literal["llama", "gpt2"] = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_kv_heads: "int | None" = None,
    d_mlp: "int | None" = None,
    n_ctx: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random ``arch`` checkpoint with the tiny tokenizer to ``folder`` (atomically) and return it."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocab_size = len(_SPECIALS) + len(TINY_WORDS)
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp or 2 * d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or n_heads,
            max_position_embeddings=n_ctx, rms_norm_eps=1e-5, tie_word_embeddings=False, **ids,
        )
        model_cls = LlamaForCausalLM
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx,
            n_inner=d_mlp, **ids,
        )
        model_cls = GPT2LMHeadModel
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}.")
    # transformers initialises from the global RNG: seed it for this call only, then restore it.
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_cls(cfg).eval()
        with torch.no_grad():  # larger-than-default weights so layers actually mix (random init is near-identity)
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, 0.3 / p.shape[-1] ** 0.5 * 3)
    finally:
        torch.random.set_rng_state(state)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
        write_tokenizer(tmp)
    return Path(folder)
