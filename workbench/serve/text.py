"""Text in and out of the server: token counts for admission, incremental decoding with stop strings.

The request handlers run on the event loop while the worker thread tokenises inside ``generate``, so they use
their own copy of the model's tokenizer (under a lock), with the model's tokenisation policy: a prompt is
counted exactly as ``workbench.tokens.tokenize`` will tokenise it.
"""

__all__ = ["Codec", "Output"]

import copy
import threading
from collections.abc import Sequence

from workbench.models import HookedModel, tokenization_of, tokenizer_of
from workbench.pairs import join
from workbench.serve.errors import ApiError


class Codec:
    """Encode prompts and decode generated ids as the model's tokenizer does, safely from any thread."""

    def __init__(self, model: HookedModel) -> None:
        self.policy = tokenization_of(model)
        if self.policy.chat_template:
            raise ApiError(
                400,
                "serve a model loaded without chat_template=True: /v1/completions takes prompts as they are and "
                "/v1/chat/completions applies the chat template itself.",
            )
        self.tok = copy.deepcopy(tokenizer_of(model))
        self._lock = threading.Lock()
        self.adds_bos = self.tok.bos_token_id is not None and self.encode("")[:1] == [self.tok.bos_token_id]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as ``workbench.tokens.tokenize(model, text)`` makes them (no length check)."""
        with self._lock:
            ids = list(self.tok(join(text, ""), truncation=False)["input_ids"])
        bos = self.tok.bos_token_id
        if self.policy.bos == "always" and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        elif self.policy.bos == "never" and ids and bos is not None and ids[0] == bos:
            ids = ids[1:]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, as ``workbench.generate`` decodes them (special tokens skipped)."""
        with self._lock:
            return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, messages: "list[dict]", model_id: str) -> str:
        """The chat template applied to ``messages`` with the generation prompt, as prompt text."""
        template = getattr(self.tok, "chat_template", None)
        if not template:
            raise ApiError(
                400,
                f"model {model_id!r} has no chat template (its tokenizer_config.json sets no chat_template), so "
                f"/v1/chat/completions cannot format messages for it; send the text to POST /v1/completions as "
                f"'prompt', or serve a checkpoint whose tokenizer has a chat template.",
                param="messages",
            )
        try:
            with self._lock:
                text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template's own refusal (e.g. roles that must alternate)
            raise ApiError(
                400, f"the model's chat template refused these messages ({e}); fix the messages.", param="messages"
            ) from None
        bos = self.tok.bos_token
        if self.adds_bos and isinstance(bos, str) and bos and text.startswith(bos):
            text = text[len(bos) :]  # the tokenizer adds the BOS itself when the prompt is tokenised
        return str(text)


class Output:
    """One choice's text as it streams: ``add(token)`` and ``end()`` return the text to send now.

    Text is sent once it is stable: a trailing incomplete character (U+FFFD) waits for its next token, and the
    last ``len(longest stop string) - 1`` characters wait until no stop string can start there. A stop string
    ends the text before it (``finish == "stop"``); the streamed pieces always add up to the final text."""

    def __init__(self, codec: Codec, stop: Sequence[str] = ()) -> None:
        self.codec, self.stop = codec, tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.sent = ""
        self.finish: str | None = None

    def add(self, token: int) -> str:
        self.tokens.append(token)
        return self._advance(self.codec.decode(self.tokens), final=False)

    def end(self, reason: str) -> str:
        """The rest of the text once generation ended for ``reason`` (``stop`` or ``length``)."""
        if self.finish is not None:
            return ""
        delta = self._advance(self.codec.decode(self.tokens), final=True)
        self.finish = self.finish or reason
        return delta

    def _advance(self, text: str, final: bool) -> str:
        if self.finish is not None:
            return ""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            text, final, self.finish = text[: min(hits)], True, "stop"
        if not text.startswith(self.sent):
            return ""  # the decoder re-spelled text already sent (rare); what was sent stands
        end = len(text) if final else len(text) - self.hold
        if not final and text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        delta = text[len(self.sent) : end] if end > len(self.sent) else ""
        self.sent += delta
        return delta
