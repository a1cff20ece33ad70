"""The toy family's tokenizer: a Llama-style SentencePiece BPE model in which every toy word is one piece.

SentencePiece (not a home-made BPE) because llama.cpp's GGUF converter accepts a ``tokenizer.model`` and rejects
unknown pre-tokenizers; the same folder then loads in transformers (which converts the
model to a fast tokenizer; ids are identical, tested), TransformerLens and llama.cpp. Ids: ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, ``<pad>`` 3; byte fallback keeps any text encodable.
"""

__all__ = ["VOCAB_SIZE", "train_tokenizer", "write_tokenizer"]

import io
import json
import random
from pathlib import Path

from workbench.toy.language import LEXICON, CorpusConfig, documents

#: Large enough that BPE merges every toy word into one piece (checked at training time).
VOCAB_SIZE = 1000


def train_tokenizer(seed: int = 0, n_documents: int = 3000) -> bytes:
    """Train the SentencePiece model on a seeded sample of the corpus; return the serialised ``tokenizer.model``.

    The sample has no collocations and no catalogues whatever a model trains on: every word is one piece either
    way, and a fixed text keeps the vocabulary (and so ``vocab_sha256``) independent of the corpus options a model
    trains on.
    """
    import sentencepiece as spm

    stream = documents(seed, CorpusConfig(p_collocation=0.0, p_catalogue=0.0))
    lines = [next(stream) for _ in range(n_documents)]
    lines += [" ".join(LEXICON.words)] * 50  # every word, frequently enough to be merged whole
    random.Random(seed).shuffle(lines)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        character_coverage=1.0,
        split_by_unicode_script=False,
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    split = [w for w in LEXICON.words if len(sp.encode(w)) != 1]
    if split:  # the toy world's exact evaluation assumes one token per word
        raise RuntimeError(f"tokenizer splits toy words {split[:5]}; raise VOCAB_SIZE.")
    return proto


def write_tokenizer(folder: "str | Path", proto: bytes) -> None:
    """Write ``tokenizer.model`` plus the transformers files (``tokenizer.json``, ``tokenizer_config.json``)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(proto)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 128,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tok = AutoTokenizer.from_pretrained(str(folder))  # converts tokenizer.model; saving adds tokenizer.json
    tok.save_pretrained(str(folder))
