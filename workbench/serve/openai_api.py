"""The OpenAI-compatible endpoints: completions and chat completions with per-request steering, streaming or not.

A request body is checked against a strict schema (exact types, unknown fields refused, finite numbers), so every
mistake is one 400 naming the field and the fix. Steering rides in the body, ``"steering": {"spec": NAME,
"scale": S}`` or a list of such objects (composed in order); the official ``openai`` client sends it as
``extra_body={"steering": ...}``. ``scale`` multiplies the strength of every add the spec holds (1: as saved,
0: none, negative: the other way); a spec that only ablates or edits spectrally has no strength, so its scale
must be 1. Parameters this server does not implement are accepted only at their neutral values.
"""

__all__ = ["CompletionRequest", "ChatRequest", "complete"]

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from workbench.errors import WorkbenchError
from workbench.schema import MAX_SCALE, Strict, validate
from workbench.serve.engine import Job, Steer
from workbench.serve.errors import ApiError, error_body
from workbench.serve.text import Output

MAX_PROMPTS = 32  # prompts in one completions request
MAX_STEERING = 8  # steering entries in one request
MAX_STOP = 4


@dataclass(frozen=True)
class SteeringItem:
    spec: str
    scale: float = 1.0


def steering_items(raw: Any) -> "list[SteeringItem] | None":
    """The ``steering`` field: ``{"spec": NAME, "scale": S}`` or a list of them; each mistake a 400 naming it."""
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    if not items or len(items) > MAX_STEERING:
        raise ApiError(400, f"steering lists {len(items)} specs; compose 1 to {MAX_STEERING}.", param="steering")
    out = []
    for i, item in enumerate(items):
        where = f"steering[{i}]" if isinstance(raw, list) else "steering"
        if not isinstance(item, dict) or "spec" not in item or set(item) - {"spec", "scale"}:
            raise ApiError(
                400,
                f'{where} must be an object {{"spec": NAME, "scale": S}} (scale optional, 1 = the spec as saved), '
                f"got {json.dumps(item)[:80]}.",
                param=where,
            )
        if not isinstance(item["spec"], str):
            raise ApiError(400, f"{where}.spec must be a spec name (a string).", param=f"{where}.spec")
        scale = item.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not abs(scale) <= MAX_SCALE:
            raise ApiError(
                400,
                f"{where}.scale must be a finite number with |scale| <= {MAX_SCALE:g} (1 = the spec as saved, 0 = "
                f"unsteered), got {scale!r}; lower it.",
                param=f"{where}.scale",
            )
        out.append(SteeringItem(item["spec"], float(scale)))
    return out


class StreamOptions(Strict):
    include_usage: bool = False


class _Sampling(Strict):
    model: str
    max_tokens: "Annotated[int, Field(ge=1, le=1_000_000)] | None" = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: int = 1
    stream: bool = False
    stream_options: "StreamOptions | None" = None
    stop: "str | list[str] | None" = None
    seed: "Annotated[int, Field(ge=0, le=2**63 - 1)] | None" = None
    steering: Any = None  # checked by steering_items
    user: "str | None" = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: "dict[str, float] | None" = None


class CompletionRequest(_Sampling):
    prompt: "str | list[str]"
    logprobs: "int | None" = None
    echo: bool = False
    suffix: "str | None" = None
    best_of: "int | None" = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: "str | list[TextPart]"
    name: "str | None" = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: "Annotated[int, Field(ge=1, le=1_000_000)] | None" = None
    logprobs: "bool | None" = None
    top_logprobs: "int | None" = None


def parse(data: Any, schema: type[Strict], endpoint: str) -> Any:
    """``data`` checked against ``schema``; a failure is a 400 naming the field and the fields taken."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the body of {endpoint} must be a JSON object, got a JSON {type(data).__name__}.")
    fields = ", ".join(schema.model_fields)
    try:
        return validate(data, schema, source="request body", fix=f"{endpoint} takes {fields}.")
    except WorkbenchError as e:
        unknown = [k for k in data if k not in schema.model_fields]
        param = unknown[0] if unknown else None
        raise ApiError(400, str(e), param=param) from None


def _unsupported(req: Any) -> None:
    neutral = {
        "n": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logit_bias": None,
        "logprobs": None,
        "top_logprobs": None,
        "echo": False,
        "suffix": None,
        "best_of": None,
    }
    for name, value in neutral.items():
        if name in type(req).model_fields:
            got = getattr(req, name)
            if got != value and not (name == "logprobs" and got is False) and not (name == "best_of" and got == 1):
                raise ApiError(
                    400,
                    f"{name}={got!r} is not supported by this server; drop {name} (or send {value!r})"
                    + ("; send n separate requests instead." if name == "n" else "."),
                    param=name,
                )
    if 0 < req.temperature < 1e-3:
        raise ApiError(
            400,
            f"temperature {req.temperature} is too small to sample with; send 0 (greedy) or >= 0.001.",
            param="temperature",
        )


def _steering(state: Any, req: Any) -> tuple[Steer, ...]:
    items = steering_items(req.steering)
    if items is None:
        return ()
    out = []
    for i, item in enumerate(items):
        param = "steering.spec" if not isinstance(req.steering, list) else f"steering[{i}].spec"
        spec = state.registry.get(item.spec, param=param)
        st = Steer(item.spec, spec, float(item.scale))
        if not any(hasattr(iv, "scale") for iv in spec.interventions) and item.scale != 1.0:
            raise ApiError(
                400,
                f"spec {item.spec!r} only ablates or edits spectrally, which has no strength; drop its scale (or send "
                f"1), or unload it to run unsteered.",
                param=param.replace(".spec", ".scale"),
            )
        for iv in spec.interventions:
            if hasattr(iv, "scale") and not abs(iv.scale * item.scale) <= MAX_SCALE:
                raise ApiError(
                    400,
                    f"scale {item.scale:g} times spec {item.spec!r}'s strength {iv.scale:g} passes "
                    f"{MAX_SCALE:g}; lower the scale.",
                    param=param.replace(".spec", ".scale"),
                )
        out.append(st)
    return tuple(out)


def _prompt_text(text: str, param: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400,
            f"{param} holds a lone surrogate at character {e.start}, which is not text; send valid Unicode.",
            param=param,
        ) from None
    return text


def _max_tokens(state: Any, req: Any, n_prompt: int, param: str) -> int:
    n_ctx = state.engine.n_ctx
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if n_prompt == 0:
        raise ApiError(400, f"{param} is empty (no tokens); send some text to continue.", param=param)
    room = n_ctx - n_prompt
    if asked is None:
        asked = 16 if isinstance(req, CompletionRequest) else room
    if room < 1 or asked > room:
        raise ApiError(
            400,
            f"{param} of {n_prompt} tokens plus max_tokens {asked} exceeds the model's context of {n_ctx} tokens; "
            + (f"lower max_tokens to at most {room} or shorten the prompt." if room >= 1 else "shorten the prompt."),
            param=param,
        )
    return int(asked)


def _jobs(state: Any, req: Any, prompts: list[str], param: str) -> list[Job]:
    if req.model != state.model_id:
        raise ApiError(
            404,
            f"model {req.model!r} is not served here; this server serves {state.model_id!r} (GET /v1/models).",
            param="model",
        )
    _unsupported(req)
    steering = _steering(state, req)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"stop lists {len(stop)} strings; send at most {MAX_STOP}.", param="stop")
    jobs = []
    for i, prompt in enumerate(prompts):
        where = param if len(prompts) == 1 else f"{param}[{i}]"
        ids = state.codec.encode(_prompt_text(prompt, where))
        jobs.append(
            Job(
                prompt=prompt,
                n_prompt_tokens=len(ids),
                max_tokens=_max_tokens(state, req, len(ids), where),
                sink=_no_sink,
                steering=steering,
                temperature=float(req.temperature),
                top_p=None if req.top_p >= 1.0 else float(req.top_p),
                seed=req.seed,
            )
        )
    return jobs


def _no_sink(event: str, value: Any) -> None:  # replaced before a job is submitted
    raise RuntimeError("job submitted without a sink")


def _usage(jobs: list[Job], outputs: list[Output]) -> dict:
    p = sum(j.n_prompt_tokens for j in jobs)
    c = sum(len(o.tokens) for o in outputs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _submit(state: Any, jobs: list[Job]) -> asyncio.Queue:
    """Queue ``jobs`` on the worker; their events arrive on the returned queue as ``(index, event, value)``.
    A full queue is a 503 before anything was sent."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def sink_for(i: int, job: Job):
        def sink(event: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, (i, event, value))
            except RuntimeError:  # the event loop is closed: the server is shutting down
                job.cancelled = True

        return sink

    for i, job in enumerate(jobs):
        job.sink = sink_for(i, job)
        try:
            state.engine.submit(job)
        except WorkbenchError as e:
            for j in jobs:
                j.cancelled = True
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
    return q


async def _events(q: asyncio.Queue, jobs: list[Job]) -> AsyncIterator[tuple[int, str, Any]]:
    """The events of ``jobs`` until each has finished; cancels the jobs left when the consumer stops early."""
    try:
        remaining = len(jobs)
        while remaining:
            i, event, value = await q.get()
            if event != "token":
                remaining -= 1
            yield i, event, value
    finally:
        for job in jobs:
            job.cancelled = True


def _choice(kind: str, i: int, text: str, finish: "str | None", first: bool = False) -> dict:
    if kind == "chat":
        delta: dict = {"content": text} if text or not first else {}
        if first:
            delta = {"role": "assistant", "content": text}
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}


async def complete(state: Any, req: Any, kind: Literal["text", "chat"]) -> Any:
    """Run a validated completions (``text``) or chat (``chat``) request: a response dict, or an async iterator
    of SSE lines when ``req.stream``."""
    if kind == "chat":
        if not req.messages:
            raise ApiError(400, "messages is empty; send at least one message.", param="messages")
        messages = [
            {"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in req.messages
        ]
        if req.model != state.model_id:
            _jobs(state, req, [""], "messages")  # the 404 naming the served model comes first
        prompts = [state.codec.chat_prompt(messages, state.model_id)]
        param = "messages"
    else:
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"prompt lists {len(prompts)} prompts; send 1 to {MAX_PROMPTS}.", param="prompt")
        param = "prompt"
    if req.stream_options is not None and not req.stream:
        raise ApiError(
            400, "stream_options applies to streaming only; drop it or send stream: true.", param="stream_options"
        )
    jobs = _jobs(state, req, prompts, param)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    outputs = [Output(state.codec, stop) for _ in jobs]
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion" if kind == "chat" else "text_completion"
    head = {"id": rid, "object": obj + (".chunk" if kind == "chat" and req.stream else ""), "created": created}
    head["model"] = state.model_id

    def step(i: int, event: str, value: Any) -> "tuple[str, str | None]":
        out = outputs[i]
        if event == "token":
            text = out.add(int(value))
            if out.finish is not None:
                jobs[i].cancelled = True  # a stop string ended it
            return text, out.finish
        if event == "error":
            raise _Failed(str(value))
        if value == "cancelled":
            return "", out.finish
        return out.end(str(value)), out.finish

    q = _submit(state, jobs)
    if not req.stream:
        try:
            async for i, event, value in _events(q, jobs):
                step(i, event, value)
        except _Failed as e:
            raise ApiError(400, e.message) from None
        choices = []
        for i, out in enumerate(outputs):
            if kind == "chat":
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": out.sent},
                        "logprobs": None,
                        "finish_reason": out.finish,
                    }
                )
            else:
                choices.append(_choice("text", i, out.sent, out.finish))
        return {**head, "choices": choices, "usage": _usage(jobs, outputs)}

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def stream() -> AsyncIterator[str]:
        def sse(choices: list) -> str:
            payload = {**head, "choices": choices}
            if include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        reported = [False] * len(jobs)
        try:
            if kind == "chat":
                for i in range(len(jobs)):
                    yield sse([_choice("chat", i, "", None, first=True)])
            async for i, event, value in _events(q, jobs):
                text, finish = step(i, event, value)
                if reported[i]:
                    continue
                if text:
                    yield sse([_choice(kind, i, text, None)])
                if finish is not None:
                    reported[i] = True
                    yield sse([_choice(kind, i, "", finish)])
            if include_usage:
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(jobs, outputs)})}\n\n"
            yield "data: [DONE]\n\n"
        except _Failed as e:
            yield f"data: {json.dumps(error_body(e.message, 'generation_error'))}\n\n"

    return stream()


class _Failed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
