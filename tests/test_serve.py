"""`workbench serve`: the OpenAI-compatible API driven by the real `openai` client, per-request steering equal to
the library's solo runs, batching under concurrency, runtime spec loading, and every bad request refused with a
4xx that names the fix while the server keeps serving. Servers bind 127.0.0.1 on a free port and are stopped
by their fixtures."""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch

from tests.conftest import BACKEND
from workbench import models
from workbench.export.spec import Spec
from workbench.generate import generate
from workbench.interventions import AddDirection
from workbench.serve import ServeConfig, running
from workbench.serve.engine import Job, Steer, batch_interventions, solo_interventions
from workbench.shipped import card
from workbench.sites import HookSite

KEY = "test-key-7c1f"
NEW = 8  # new tokens per request: toy-m is tiny, these tests stay fast
PROMPTS = [
    "the cat is",
    "we like the happy dog and",
    "a big red car",
    "the bad bird sees",
    "q: what is the sky ? a:",
    "indeed the calm cow",
    "this old van",
    "each brave horse pursues",
]


def _client(url: str, key: "str | None" = KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60, trust_env=False)


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60, http_client=httpx.Client(trust_env=False)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    specs = tmp_path_factory.mktemp("specs")
    model = models.load("toy-m", backend=BACKEND)
    config = ServeConfig(specs=specs, api_key=KEY, batch_window_ms=20.0, max_upload_bytes=50_000)
    with running(config, model) as r:
        yield r


def _solo(server, prompt: str, steering: "list[tuple[str, float]]", n: int = NEW) -> str:
    """The library's own greedy generation of ``prompt`` alone, on the server's worker thread."""
    steers = [Steer(name, server.state.registry.get(name), scale) for name, scale in steering]
    work = server.state.engine.call(
        lambda m: generate(m, [prompt], *solo_interventions(steers), max_new_tokens=n, temperature=0.0)
    )
    return work.result(timeout=60).texts[0]


def _steering(steering: "list[tuple[str, float]]") -> "dict | list | None":
    items = [{"spec": name, "scale": scale} for name, scale in steering]
    return None if not items else items[0] if len(items) == 1 else items


# --------------------------------------------------------------------------------------------------- the API


def test_the_no_argument_default_serves_toy_m_with_the_demos_specs(server):
    oa = _openai(server.url)
    assert [m.id for m in oa.models.list().data] == ["toy-m"]
    listed = _client(server.url).get("/v1/steering").json()
    assert {s["id"] for s in listed["data"]} == {"sentiment", "topic", "register", "language", "truth"}
    sentiment = next(s for s in listed["data"] if s["id"] == "sentiment")
    best = card("toy-m")["measured"]["steering"]["sentiment"]["best"]
    assert sentiment["interventions"] == [
        {
            "kind": "add",
            "hook": f"blocks.{best['layer']}.hook_resid_post",
            "layer": best["layer"],
            "site": "resid_post",
            "positions": {"kind": "all", "start": 0},
            "scale": best["strength"],
        }
    ]


def test_steered_completion_equals_the_library_and_streams_the_same_text(server):
    oa = _openai(server.url)
    prompt, steering = PROMPTS[0], [("sentiment", 2.0)]
    r = oa.completions.create(
        model="toy-m",
        prompt=prompt,
        max_tokens=NEW,
        temperature=0,
        extra_body={"steering": {"spec": "sentiment", "scale": 2.0}},
    )
    assert r.choices[0].text == _solo(server, prompt, steering)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(server.state.codec.encode(prompt)) and r.usage.completion_tokens == NEW
    plain = oa.completions.create(model="toy-m", prompt=prompt, max_tokens=NEW, temperature=0)
    assert plain.choices[0].text == _solo(server, prompt, []) != r.choices[0].text  # steering changes the text

    chunks = list(
        oa.completions.create(
            model="toy-m",
            prompt=prompt,
            max_tokens=NEW,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"steering": {"spec": "sentiment", "scale": 2.0}},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == r.choices[0].text and len([t for t in texts if t]) >= 4  # streamed token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == NEW


def test_composed_steering_and_stop_strings(server):
    oa = _openai(server.url)
    prompt, steering = PROMPTS[1], [("topic", 1.5), ("sentiment", -1.0)]
    r = oa.completions.create(
        model="toy-m", prompt=prompt, max_tokens=NEW, temperature=0, extra_body={"steering": _steering(steering)}
    )
    full = _solo(server, prompt, steering)
    assert r.choices[0].text == full
    word = full.split()[2]
    cut = oa.completions.create(
        model="toy-m",
        prompt=prompt,
        max_tokens=NEW,
        temperature=0,
        stop=[f" {word}"],
        stream=True,
        extra_body={"steering": _steering(steering)},
    )
    chunks = [c.choices[0] for c in cut]
    assert "".join(c.text for c in chunks) == full[: full.index(f" {word}")] and chunks[-1].finish_reason == "stop"


def test_seeded_sampling_reproduces_and_a_prompt_list_returns_one_choice_each(server):
    oa = _openai(server.url)
    kw = dict(model="toy-m", max_tokens=NEW, temperature=1.0, seed=7, extra_body={"steering": {"spec": "register"}})
    a, b = (oa.completions.create(prompt=PROMPTS[2], **kw).choices[0].text for _ in range(2))
    assert a == b
    many = oa.completions.create(model="toy-m", prompt=PROMPTS[:3], max_tokens=NEW, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [_solo(server, p, []) for p in PROMPTS[:3]]


def test_specs_hot_load_and_unload_without_a_restart(server):
    c = _client(server.url)
    folder = server.state.registry.folder
    shutil.copytree(folder / "topic", folder / "topic-copy")
    body = {"model": "toy-m", "prompt": PROMPTS[3], "max_tokens": NEW, "temperature": 0}
    steered = {**body, "steering": {"spec": "topic-copy", "scale": 2.0}}
    r = c.post("/v1/completions", json=steered)
    assert r.status_code == 404 and "POST /v1/steering" in r.json()["error"]["message"]
    assert "topic-copy" in c.get("/v1/steering").json()["available"]
    loaded = c.post("/v1/steering", json={"name": "topic-copy"})
    assert loaded.status_code == 200 and loaded.json()["id"] == "topic-copy"
    text = c.post("/v1/completions", json=steered).json()["choices"][0]["text"]
    assert text == _solo(server, PROMPTS[3], [("topic", 2.0)])
    assert c.delete("/v1/steering/topic-copy").json()["deleted"] is True
    assert "topic-copy" not in {s["id"] for s in c.get("/v1/steering").json()["data"]}
    assert c.post("/v1/completions", json=steered).status_code == 404
    assert c.post("/v1/steering", json={"name": "topic-copy"}).status_code == 200  # back again, then by body
    assert c.request("DELETE", "/v1/steering", json={"name": "topic-copy"}).status_code == 200


def test_a_zero_scale_row_is_left_bit_for_bit_unchanged(server):
    model = server.state.model
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    iv = AddDirection(HookSite(1), v, (0.0, 3.0, -0.0))
    (_, add), *_ = iv.to_hooks(model)
    x = torch.randn(3, 5, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    y = add(x, None)
    assert torch.equal(y[0], x[0]) and torch.equal(y[2], x[2]) and not torch.equal(y[1], x[1])
    spec = server.state.registry.get("sentiment")
    rows = batch_interventions([[Steer("a", spec, 2.0)], [], [Steer("a", spec, 1.0), Steer("a", spec, 1.0)]])
    assert [r.scale for r in rows] == [(2.0 * 0.75, 0.0, 0.75), (0.0, 0.0, 0.75)]


def _poll(c: httpx.Client, job: dict) -> dict:
    for _ in range(600):  # at most 60 s
        if job["state"] in ("done", "error"):
            return job
        time.sleep(0.1)
        job = c.get(f"/api/jobs/{job['id']}").json()
    raise AssertionError(f"job {job} did not finish in 60 s")


def test_playground_api_uploads_pairs_computes_compares_saves_and_exports(server, tmp_path):
    import io
    import zipfile

    from workbench.export.gguf import read_gguf

    c = _client(server.url)
    octet = {"Content-Type": "application/octet-stream"}
    bad = c.post("/api/pairs?name=mine.jsonl", content=b'{"positive": "good"}\n', headers=octet)
    assert bad.status_code == 400 and "mine.jsonl:1" in bad.json()["error"]["message"]
    rows = [("the cat is", "happy", "sad"), ("the dog is very", "good", "bad"), ("we like the", "warm", "cold")] * 3
    text = "".join(json.dumps({"prompt": p, "positive": a, "negative": b}) + "\n" for p, a, b in rows)
    up = c.post("/api/pairs?name=mine.jsonl", content=text.encode(), headers=octet).json()
    assert up["n_pairs"] == 9
    job = _poll(c, c.post("/api/directions", json={"pairs": up["pairs"], "method": "mean"}).json())
    assert job["state"] == "done" and job["progress"] == 1, job
    result = job["result"]
    assert [q["layer"] for q in result["layers"]] == list(range(server.state.model.cfg.n_layers))
    assert all(0 <= q["auroc"] <= 1 for q in result["layers"])
    body = {"directions": result["directions"], "layer": 1, "strengths": [2.0], "prompts": ["the cat is"]}
    cmp = c.post("/api/compare", json={**body, "temperature": 0}).json()
    unsteered, steered = cmp["columns"]
    assert unsteered["strength"] == 0 and abs(unsteered["rows"][0]["kl"]) < 1e-4 and steered["rows"][0]["kl"] > 0
    assert unsteered["rows"][0]["text"] == _solo(server, "the cat is", [], 24)
    save = {"directions": result["directions"], "layer": 1, "strength": 2.0, "name": "api-edit"}
    assert c.post("/api/specs", json=save).status_code == 201
    again = c.post("/api/specs", json=save)
    assert again.status_code == 409 and "overwrite" in again.json()["error"]["message"]
    assert "api-edit" in {s["id"] for s in c.get("/v1/steering").json()["data"]}
    spec = zipfile.ZipFile(io.BytesIO(c.get("/api/specs/api-edit/download?format=spec").content))
    assert sorted(spec.namelist()) == ["api-edit/intervention.json", "api-edit/tensors.safetensors"]
    gguf = c.get("/api/specs/api-edit/download?format=gguf")
    assert gguf.content[:4] == b"GGUF"
    (tmp_path / "e.gguf").write_bytes(gguf.content)
    iv = server.state.registry.get("api-edit").interventions[0]
    assert torch.allclose(read_gguf(tmp_path / "e.gguf", server.state.model).interventions[0].vector, 2.0 * iv.vector)
    baked = zipfile.ZipFile(io.BytesIO(c.get("/api/specs/api-edit/download?format=hf-baked").content))
    assert {"api-edit/config.json", "api-edit/workbench_bake.json"} <= set(baked.namelist())
    layer0 = c.post("/api/specs", json={**save, "layer": 0, "name": "api-edit-0"})
    refused = c.get("/api/specs/api-edit-0/download?format=gguf")
    assert layer0.status_code == 201 and refused.status_code == 400 and "block 0" in refused.json()["error"]["message"]
    for name in ("api-edit", "api-edit-0"):
        c.delete(f"/v1/steering/{name}")
        shutil.rmtree(server.state.registry.folder / name)


# ---------------------------------------------------------------------------------------------- concurrency


def test_sixteen_concurrent_clients_with_mixed_steering_each_get_their_solo_output(server):
    specs = ["sentiment", "topic", "register", "language"]
    cases = []
    for i in range(16):
        steering = [] if i % 5 == 4 else [(specs[i % 5 % 4], (1.0, 2.0, -1.0, 0.5)[i % 4])]
        cases.append((PROMPTS[i % len(PROMPTS)], steering, i % 3 == 0))  # every third client streams
    before = server.state.engine.stats()
    barrier = threading.Barrier(len(cases))
    results: dict = {}

    def client(i: int) -> None:
        prompt, steering, stream = cases[i]
        body = {"model": "toy-m", "prompt": prompt, "max_tokens": NEW, "temperature": 0, "stream": stream}
        if steering:
            body["steering"] = _steering(steering)
        with _client(server.url) as c:
            barrier.wait(timeout=30)
            r = c.post("/v1/completions", json=body)
            if not stream:
                results[i] = (r.status_code, r.json()["choices"][0]["text"])
                return
            lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            results[i] = (r.status_code, "".join(json.loads(ln)["choices"][0]["text"] for ln in lines[:-1]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(len(cases))), "a request was lost"
    for i, (prompt, steering, _) in enumerate(cases):
        assert results[i] == (200, _solo(server, prompt, steering)), (i, steering)
    after = server.state.engine.stats()
    batches = after["rows_per_batch"][len(before["rows_per_batch"]) :]
    assert max(batches) >= 4, batches  # requests shared batches
    assert after["mixed_batches"] > before["mixed_batches"]  # different steering in one forward
    assert _openai(server.url).models.list().data[0].id == "toy-m"  # still serving


def test_a_young_greedy_batch_restarts_with_new_arrivals_and_each_request_keeps_its_tokens(server):
    engine, codec = server.state.engine, server.state.codec
    events: dict = {"a": [], "b": []}
    steer = (Steer("topic", server.state.registry.get("topic"), 2.0),)
    a = Job(PROMPTS[5], len(codec.encode(PROMPTS[5])), 6, lambda e, v: events["a"].append((e, v)), steer)
    b = Job(PROMPTS[6], len(codec.encode(PROMPTS[6])), 6, lambda e, v: events["b"].append((e, v)))

    def work(model):
        with engine._lock:
            engine._pending_mergeable += 1  # as if a request were waiting: `a`'s batch stops after its first token
        try:
            carry = engine._run_group([a])
        finally:
            with engine._lock:
                engine._pending_mergeable -= 1
        assert carry == [a] and len(a.tokens) == 1
        assert engine._run_group([a, b]) == []  # `a` regenerates its first token, then both go on

    engine.call(work).result(timeout=60)
    for job, ev, steering in ((a, events["a"], [("topic", 2.0)]), (b, events["b"], [])):
        sent = [v for e, v in ev if e == "token"]
        assert ev[-1] == ("done", "length") and sent == job.tokens
        assert server.state.codec.decode(sent) == _solo(server, job.prompt, steering, 6)
    assert engine.stats().get("restart_mismatches", 0) == 0


def test_a_client_that_disconnects_is_dropped_before_its_generation_runs(server):
    engine = server.state.engine
    gate = threading.Event()
    engine.call(lambda m: gate.wait(30))  # holds the worker
    before = engine.stats()["batches"]
    body = {"model": "toy-m", "prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0, "stream": True}
    with _client(server.url) as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200  # then the client closes the connection without reading
    try:
        for _ in range(100):  # the server notices the closed connection and cancels the queued job
            queued = [j for j in list(engine._q.queue) if hasattr(j, "cancelled")]
            if queued and all(j.cancelled for j in queued):
                break
            time.sleep(0.1)
        assert queued and all(j.cancelled for j in queued)
    finally:
        gate.set()
    ok = _client(server.url).post("/v1/completions", json={**body, "stream": False, "max_tokens": 3})
    assert ok.status_code == 200
    stats = engine.stats()
    assert stats["batches"] == before + 1 and stats["rows_per_batch"][-1] == 1  # only the second request ran


# ------------------------------------------------------------------------------------------------ bad input


def _other_model_spec(server) -> None:
    folder = server.state.registry.folder
    spec = server.state.registry.get("sentiment")
    fp = dataclasses.replace(spec.fingerprint, weights_sha256="0" * 64)
    Spec(spec.interventions, fp, spec.provenance).save(folder / "other-model")


def test_every_bad_request_is_a_4xx_that_names_the_fix_and_the_server_keeps_serving(server, tmp_path):
    url = server.url
    c = _client(url)
    _other_model_spec(server)
    outside = tmp_path / "outside"
    shutil.copytree(server.state.registry.folder / "sentiment", outside)
    (server.state.registry.folder / "linked").symlink_to(outside, target_is_directory=True)
    ok = {"model": "toy-m", "prompt": "the cat", "max_tokens": 2, "temperature": 0}
    raw = {"Content-Type": "application/json"}
    cases = [
        ("unknown spec", lambda: c.post("/v1/completions", json={**ok, "steering": {"spec": "nope"}}), 404,
         "POST /v1/steering"),
        ("spec for another model", lambda: c.post("/v1/steering", json={"name": "other-model"}), 422,
         "made for another model"),
        ("NaN scale", lambda: c.post("/v1/completions", headers=raw,
         content=b'{"model": "toy-m", "prompt": "x", "steering": {"spec": "sentiment", "scale": NaN}}'), 400,
         "NaN is not a JSON number"),
        ("overflowing scale", lambda: c.post("/v1/completions", headers=raw,
         content=b'{"model": "toy-m", "prompt": "x", "steering": {"spec": "sentiment", "scale": 1e999}}'), 400,
         "overflows"),
        ("absurd scale", lambda: c.post("/v1/completions", json={**ok, "steering": {"spec": "sentiment",
         "scale": 1e9}}), 400, "|scale| <= 10000"),
        ("scale of a string", lambda: c.post("/v1/completions", json={**ok, "steering": {"spec": "sentiment",
         "scale": "2"}}), 400, "finite number"),
        ("prompt beyond the context", lambda: c.post("/v1/completions", json={**ok, "prompt": "the cat " * 80}), 400,
         "context of 128 tokens; shorten the prompt"),
        ("max_tokens beyond the context", lambda: c.post("/v1/completions", json={**ok, "max_tokens": 500}), 400,
         "lower max_tokens to at most"),
        ("malformed JSON", lambda: c.post("/v1/completions", headers=raw, content=b'{"model": "toy-m",'), 400,
         "not valid JSON"),
        ("not JSON content", lambda: c.post("/v1/completions", content=json.dumps(ok).encode()), 415,
         "Content-Type: application/json"),
        ("unknown field", lambda: c.post("/v1/completions", json={**ok, "temprature": 0}), 400,
         "temprature: extra inputs are not permitted"),
        ("wrong model", lambda: c.post("/v1/completions", json={**ok, "model": "gpt-4"}), 404, "serves 'toy-m'"),
        ("n > 1", lambda: c.post("/v1/completions", json={**ok, "n": 2}), 400, "send n separate requests"),
        ("chat without a template", lambda: c.post("/v1/chat/completions", json={"model": "toy-m",
         "messages": [{"role": "user", "content": "hi"}]}), 400, "send the text to POST /v1/completions"),
        ("oversized upload", lambda: c.post("/api/pairs", content=b"x" * 60_000,
         headers={"Content-Type": "application/octet-stream"}), 413, "--max-upload-bytes"),
        ("oversized body", lambda: c.post("/v1/completions", json={**ok, "prompt": "a" * (1 << 20)}), 413,
         "larger than 1048576 bytes"),
        ("spec name escaping in steering", lambda: c.post("/v1/completions", json={**ok, "steering": {
         "spec": "../sentiment"}}), 400, "not a plain folder name"),
        ("spec name escaping on load", lambda: c.post("/v1/steering", json={"name": "../../etc"}), 400,
         "not a plain folder name"),
        ("spec name escaping on unload", lambda: c.delete("/v1/steering/..%2F..%2Fetc%2Fpasswd"), 400,
         "not a plain folder name"),
        ("spec name escaping on download", lambda: c.get("/api/specs/..%2Fsentiment/download"), 400,
         "not a plain folder name"),
        ("spec folder linking outside", lambda: c.post("/v1/steering", json={"name": "linked"}), 400,
         "links outside the spec directory"),
        ("missing API key", lambda: _client(url, None).get("/v1/models"), 401, "Authorization: Bearer"),
        ("wrong API key", lambda: _client(url, "nope").get("/v1/steering"), 401, "wrong API key"),
        ("wrong API key on the page", lambda: _client(url, None).get("/?api_key=nope"), 401, "wrong API key"),
        ("foreign Host header", lambda: c.get("/v1/models", headers={"Host": "evil.example:80"}), 400,
         "127.0.0.1 or localhost"),
        ("unknown endpoint", lambda: c.get("/v1/engines"), 404, "the endpoints are"),
    ]  # fmt: skip
    for what, call, status, fix in cases:
        r = call()
        assert r.status_code == status, (what, r.status_code, r.text)
        err = r.json()["error"]
        assert fix in err["message"] and err["type"], (what, err)
        after = c.post("/v1/completions", json=ok)
        assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] == "length", what
    assert sorted(p.name for p in outside.iterdir()) == ["intervention.json", "tensors.safetensors"]
    leftovers = [p.name for p in server.state.registry.folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no partial files
    with pytest.raises(openai.NotFoundError, match="POST /v1/steering"):  # the openai client shows the message
        _openai(url).completions.create(model="toy-m", prompt="x", extra_body={"steering": {"spec": "nope"}})
    shutil.rmtree(server.state.registry.folder / "other-model")
    (server.state.registry.folder / "linked").unlink()


def test_a_browser_session_opens_with_the_key_once_then_uses_a_cookie(server):
    with _client(server.url, None) as c:
        r = c.get("/?api_key=" + KEY)
        assert r.status_code == 303 and r.headers["location"] == "/" and KEY not in r.headers["set-cookie"]
        page = c.get("/")
        assert page.status_code == 200 and "workbench playground" in page.text
        assert c.get("/v1/models").status_code == 200
        assert c.get("/static/plotly.min.js").text.startswith("/**")  # served locally, not from a CDN
        assert "cdn" not in page.text.lower()


# --------------------------------------------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    from workbench.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("chat")
    folder = write_tiny_checkpoint(root / "tiny-chat", "llama", n_layers=2, d_model=32, n_heads=4, chat_template=True)
    model = models.load(folder, backend=BACKEND)
    with running(ServeConfig(model=str(folder), specs=root / "specs"), model) as r:
        yield r


def test_chat_uses_the_models_template_streaming_or_not(chat_server):
    from workbench.tokens import tokenize

    url, model = chat_server.url, chat_server.state.model
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, http_client=httpx.Client(trust_env=False))
    messages = [{"role": "system", "content": "we like the cat"}, {"role": "user", "content": "the dog is"}]
    r = oa.chat.completions.create(model=chat_server.state.model_id, messages=messages, max_tokens=6, temperature=0)
    tok = models.tokenizer_of(model)
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = chat_server.state.codec.chat_prompt(messages, "m")
    assert tokenize(model, prompt) == list(ids) and text.endswith(prompt)  # one BOS, as the template writes it
    work = chat_server.state.engine.call(lambda m: generate(m, [prompt], max_new_tokens=6, temperature=0.0))
    assert r.choices[0].message.content == work.result(timeout=60).texts[0]
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens == len(ids)
    chunks = list(
        oa.chat.completions.create(
            model=chat_server.state.model_id, messages=messages, max_tokens=6, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


# ------------------------------------------------------------------------------------------------ the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    BACKEND != "bridge",
    reason="starting the command costs a fresh interpreter (~15 s); it runs once, under the bridge backend, and the "
    "server it starts is tested under both backends above",
)
def test_workbench_serve_command_binds_loopback_and_reads_the_key_from_the_environment(ckpt_dirs, tmp_path):
    port = _free_port()
    env = {**os.environ, "WORKBENCH_API_KEY": KEY, "WORKBENCH_BACKEND": BACKEND}
    cmd = [sys.executable, "-m", "workbench", "serve", "--model", str(ckpt_dirs["llama"]), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _client(url).get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert _client(url).get("/v1/models").json()["data"][0]["id"] == str(ckpt_dirs["llama"])
        assert _client(url, None).get("/v1/models").status_code == 401
        assert (tmp_path / "workbench-specs").is_dir()  # the default spec directory, in the working directory
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode in (0, -15)
