"""The FastAPI application: routes, API-key check, body limits, JSON errors; ``serve`` and ``running`` start it.

Every response to a bad request is a 4xx with OpenAI's error JSON, ``{"error": {"message", "type", "param",
"code"}}``, whose message names the fix; an unexpected failure is a 500 of the same shape, and the server keeps
serving either way. Bodies are read up to a limit (``max_body_bytes``, ``max_upload_bytes`` for pairs uploads)
and JSON bodies must say ``Content-Type: application/json``, which also keeps other web pages from posting to a
local server. A server bound to a loopback address answers only requests whose Host is a loopback name (no DNS
rebinding).

With an API key (``--api-key`` or ``$WORKBENCH_API_KEY``) every endpoint needs ``Authorization: Bearer KEY``
(the ``openai`` client sends it as ``api_key``). A browser opens the playground once at ``/?api_key=KEY``: that
sets an HTTP-only cookie holding a keyed hash of the key (never the key) and redirects to ``/``.
"""

__all__ = ["ServeConfig", "State", "create_app", "build_state", "serve", "running", "Running"]

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from workbench.errors import WorkbenchError
from workbench.models import HookedModel
from workbench.schema import parse_json
from workbench.serve.engine import Engine
from workbench.serve.errors import ApiError, error_body
from workbench.serve.registry import SpecRegistry, describe, seed_toy_specs
from workbench.serve.text import Codec

STATIC = Path(__file__).parent / "static"
COOKIE = "workbench_key"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_ENDPOINTS = (
    "GET /, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET/POST/DELETE /v1/steering, "
    "GET /api/info, POST /api/pairs, POST /api/directions, GET /api/jobs/ID, POST /api/compare, POST /api/specs, "
    "GET /api/specs/NAME/download, GET /api/stats, GET /health"
)


@dataclass(frozen=True)
class ServeConfig:
    """How to serve: the model, the spec directory, the address, the key and the limits."""

    model: str = "toy-m"
    backend: "str | None" = None
    specs: "str | Path | None" = None  # default: ./workbench-specs
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: "str | None" = None
    max_batch: int = 32
    batch_window_ms: float = 10.0  # a batch waits while requests arrive less than this apart ...
    batch_max_wait_ms: float = 100.0  # ... for at most this long
    max_body_bytes: int = 1 << 20
    max_upload_bytes: int = 2 << 20

    def __post_init__(self) -> None:
        if self.api_key is not None and (not self.api_key or not self.api_key.isprintable() or " " in self.api_key):
            raise WorkbenchError("the API key must be a non-empty string of printable characters without spaces.")
        for name in ("max_body_bytes", "max_upload_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclass(eq=False)
class State:
    """Everything the routes use: the model and its id, worker, specs, tokenizer copy, playground."""

    model: HookedModel
    model_id: str
    engine: Engine
    registry: SpecRegistry
    codec: Codec
    config: ServeConfig
    playground: Any
    created: int = field(default_factory=lambda: int(time.time()))
    cookie_salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def cookie_value(self) -> str:
        key = (self.config.api_key or "").encode()
        return hmac.new(self.cookie_salt, key, hashlib.sha256).hexdigest()


def build_state(model: HookedModel, model_id: str, config: ServeConfig) -> State:
    """The server state for a loaded ``model``: loads every spec of the spec directory (seeding it with the demo's
    specs when it holds none and the model is a shipped toy model) and starts the worker thread."""
    from workbench.serve.playground import Playground

    folder = Path(config.specs or "workbench-specs")
    registry = SpecRegistry(folder, model)
    if not registry.on_disk() and model_id in ("toy-s", "toy-m", "toy-l"):
        written = seed_toy_specs(model, model_id, registry.folder)
        print(f"serve: wrote the demo's specs ({', '.join(written)}) into {registry.folder}", file=sys.stderr)
    refused = registry.load_all()
    for name, reason in refused.items():
        print(f"serve: spec {name!r} not loaded: {reason}", file=sys.stderr)
    engine = Engine(
        model,
        max_batch=config.max_batch,
        window_s=config.batch_window_ms / 1000,
        max_wait_s=max(config.batch_window_ms, config.batch_max_wait_ms) / 1000,
    ).start()
    work = Path(tempfile.mkdtemp(prefix="workbench-serve-"))
    playground = Playground(engine, registry, model_id, work, config.max_upload_bytes)
    return State(model, model_id, engine, registry, Codec(model), config, playground)


# -------------------------------------------------------------------------------------------------------- bodies


async def _body(request: Any, limit: int, fix: str) -> bytes:
    too_big = f"the request body is larger than {limit} bytes; {fix}"
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, too_big)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, too_big)
    return bytes(buf)


async def _json(request: Any, state: State) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(
            415,
            f"send the body as JSON with the header Content-Type: application/json (got {ctype or 'none'!r}; with "
            f"curl add -H 'Content-Type: application/json').",
        )
    raw = await _body(request, state.config.max_body_bytes, "send a smaller request.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not UTF-8 (byte {e.start}); send UTF-8 JSON.") from None
    try:
        return parse_json(text, "request body", 'send one JSON object, e.g. {"model": ..., "prompt": ...}.')
    except WorkbenchError as e:
        raise ApiError(400, str(e)) from None


def _error(status: int, message: str, type: "str | None" = None, param: "str | None" = None, headers=None) -> Any:
    from fastapi.responses import JSONResponse

    e = ApiError(status, message, param=param, type=type)
    return JSONResponse(error_body(e.message, e.type, e.param), status_code=status, headers=headers)


# ----------------------------------------------------------------------------------------------------------- app


def create_app(state: State) -> Any:
    """The FastAPI app serving ``state``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    from workbench.serve import openai_api as oa
    from workbench.serve import playground as pg

    app = FastAPI(title="workbench serve", docs_url=None, redoc_url=None, openapi_url=None)
    key = state.config.api_key
    loopback = state.config.host in _LOOPBACK

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if loopback:
            host = _hostname(request.headers.get("host") or "")
            if host not in _LOOPBACK:
                return _error(
                    400,
                    f"Host {host!r} is not this server's: it binds {state.config.host}, so requests must name it as "
                    f"127.0.0.1 or localhost; serve with --host 0.0.0.0 to accept other names.",
                )
        if key is not None:
            given = request.query_params.get("api_key")
            if given is not None and request.method == "GET":
                if not hmac.compare_digest(given.encode(), key.encode()):
                    return _error(
                        401, "wrong API key in ?api_key=; open the page with the key the server was started with."
                    )
                query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "api_key"])
                response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
                response.set_cookie(COOKIE, state.cookie_value(), httponly=True, samesite="strict", path="/")
                return response
            auth = request.headers.get("authorization", "")
            cookie = request.cookies.get(COOKIE, "")
            if auth:
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                    return _error(
                        401,
                        "wrong API key: send the key the server was started with (--api-key or $WORKBENCH_API_KEY) "
                        "as Authorization: Bearer KEY.",
                    )
            elif not (cookie and hmac.compare_digest(cookie, state.cookie_value())):
                return _error(
                    401,
                    "missing API key: this server needs Authorization: Bearer KEY (the openai client's api_key); in a "
                    "browser, open /?api_key=KEY once.",
                )
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Any:
        return _error(e.status, e.message, e.type, e.param, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Any:
        if e.status_code == 404:
            return _error(404, f"no endpoint {request.method} {request.url.path}; the endpoints are {_ENDPOINTS}.")
        if e.status_code == 405:
            return _error(405, f"{request.url.path} does not take {request.method}; the endpoints are {_ENDPOINTS}.")
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Any:
        return _error(
            500,
            f"internal error ({type(e).__name__}: {e}); the server keeps serving, please report it.",
            "server_error",
        )

    # -- OpenAI-compatible --------------------------------------------------------------------------------------

    def model_card() -> dict:
        return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "workbench"}

    @app.get("/v1/models")
    async def list_models() -> Any:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        if model_id != state.model_id:
            raise ApiError(404, f"model {model_id!r} is not served here; this server serves {state.model_id!r}.")
        return model_card()

    async def _complete(request: Request, schema: type, kind: str, endpoint: str) -> Any:
        req = oa.parse(await _json(request, state), schema, endpoint)
        result = await oa.complete(state, req, kind)  # type: ignore[arg-type]
        if isinstance(result, dict):
            return result
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _complete(request, oa.CompletionRequest, "text", "POST /v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _complete(request, oa.ChatRequest, "chat", "POST /v1/chat/completions")

    # -- steering specs -----------------------------------------------------------------------------------------

    def steering_list() -> dict:
        loaded = state.registry.loaded()
        return {
            "object": "list",
            "data": [describe(n, s) for n, s in sorted(loaded.items())],
            "available": [n for n in state.registry.on_disk() if n not in loaded],
            "spec_dir": str(state.registry.folder),
        }

    async def _name(request: Request) -> str:
        body = await _json(request, state)
        if not isinstance(body, dict) or set(body) != {"name"}:
            raise ApiError(400, 'send {"name": SPEC}: the name of a spec folder in the spec directory.', param="name")
        return body["name"]

    @app.get("/v1/steering")
    async def steering_get() -> Any:
        return steering_list()

    @app.post("/v1/steering")
    async def steering_load(request: Request) -> Any:
        name = await _name(request)
        spec = await asyncio.to_thread(state.registry.load, name)
        return describe(name, spec)

    @app.delete("/v1/steering/{name:path}")
    async def steering_unload(name: str) -> Any:
        state.registry.unload(name)
        return {"id": name, "object": "steering", "deleted": True}

    @app.delete("/v1/steering")
    async def steering_unload_body(request: Request) -> Any:
        name = await _name(request)
        state.registry.unload(name)
        return {"id": name, "object": "steering", "deleted": True}

    # -- playground ---------------------------------------------------------------------------------------------

    @app.get("/")
    async def index() -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    @app.get("/static/{name}")
    async def static(name: str) -> Any:
        path = _static_files().get(name)
        if path is None:
            raise ApiError(404, f"no static file {name!r}; the playground's files are {', '.join(_static_files())}.")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": state.model_id}

    @app.get("/api/info")
    async def info() -> Any:
        return state.playground.info(state.model_id, key is not None)

    @app.get("/api/stats")
    async def stats() -> Any:
        return state.engine.stats()

    @app.post("/api/pairs")
    async def upload(request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            raise ApiError(415, "upload the pairs file as the raw body with Content-Type: application/octet-stream.")
        limit = state.config.max_upload_bytes
        data = await _body(
            request,
            limit,
            f"upload a smaller pairs file (at most {limit} bytes), or restart the server with a larger "
            f"--max-upload-bytes.",
        )
        return await asyncio.to_thread(state.playground.upload, data, request.query_params.get("name", "upload.jsonl"))

    @app.post("/api/directions", status_code=202)
    async def directions(request: Request) -> Any:
        req = oa.parse(await _json(request, state), pg.DirectionsRequest, "POST /api/directions")
        return state.playground.start_directions(req)

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> Any:
        return state.playground.task(job_id)

    @app.post("/api/compare")
    async def compare(request: Request) -> Any:
        req = oa.parse(await _json(request, state), pg.CompareRequest, "POST /api/compare")
        work = state.playground.compare(req)
        return await asyncio.wrap_future(state.engine.call(work))

    @app.post("/api/specs", status_code=201)
    async def save(request: Request) -> Any:
        req = oa.parse(await _json(request, state), pg.SaveRequest, "POST /api/specs")
        return await asyncio.to_thread(state.playground.save, req)

    @app.get("/api/specs/{name:path}/download")
    async def download(name: str, format: str = "spec") -> Any:
        content, media, filename = await asyncio.to_thread(state.playground.export, name, format)
        return Response(
            content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    return app


def _hostname(host: str) -> str:
    """The name part of a Host header: ``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``[::1]``."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _static_files() -> dict[str, Path]:
    import plotly

    return {
        "playground.js": STATIC / "playground.js",
        "playground.css": STATIC / "playground.css",
        "plotly.min.js": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
    }


# ------------------------------------------------------------------------------------------------------- running


def _load(config: ServeConfig) -> HookedModel:
    from workbench import models

    return models.load(config.model, backend=config.backend)


def _model_id(name: str) -> str:
    return name.rstrip("/") or name


def serve(config: ServeConfig) -> None:
    """Load the model, then serve until interrupted (``workbench serve``)."""
    import uvicorn

    model = _load(config)
    state = build_state(model, _model_id(config.model), config)
    app = create_app(state)
    where = f"http://{'[' + config.host + ']' if ':' in config.host else config.host}:{config.port}"
    print(
        f"serve: {state.model_id} on {where}/ (playground) and {where}/v1 (OpenAI API); "
        f"{len(state.registry.loaded())} specs loaded from {state.registry.folder}"
        + ("; API key required" if config.api_key else ""),
        file=sys.stderr,
    )
    if config.host not in _LOOPBACK and not config.api_key:
        print(
            f"serve: warning: {config.host} accepts other machines and no API key is set; set $WORKBENCH_API_KEY "
            f"or --api-key so that only your clients can steer this model.",
            file=sys.stderr,
        )
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        state.engine.stop()
        state.playground.cleanup()


@dataclass(frozen=True)
class Running:
    """A server started by ``running``: its base URL and state (for tests and benchmarks)."""

    url: str
    state: State


@contextlib.contextmanager
def running(config: ServeConfig, model: "HookedModel | None" = None, *, timeout: float = 60.0) -> Iterator[Running]:
    """Serve in a background thread on ``config.host`` and a free port (``config.port`` is ignored); stops the
    server, the worker and the scratch folder on exit."""
    import uvicorn

    model = model if model is not None else _load(config)
    state = build_state(model, _model_id(config.model), config)
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="workbench-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise WorkbenchError(f"the server did not start within {timeout:.0f} s.")
            time.sleep(0.02)
        yield Running(f"http://{'[' + config.host + ']' if ':' in config.host else config.host}:{port}", state)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        state.engine.stop()
        state.playground.cleanup()
