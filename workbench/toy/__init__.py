"""The toy world: a synthetic language with known attributes and the model family trained on it.

``language`` (grammar, attributes, documents), ``evaluate`` (exact classifiers, grammaticality, factual accuracy),
``prompts`` (pairs, A/B items, prompt families), ``tokenizer`` (SentencePiece), ``train`` (the family's training),
``measure`` (the cards' measured properties). The shipped checkpoints live in ``checkpoints/<name>/``; their
names, folders and cards come from ``workbench.shipped``.
"""

__all__ = ["NAMES", "checkpoint_dir", "card"]

from workbench.shipped import NAMES, card, checkpoint_dir
