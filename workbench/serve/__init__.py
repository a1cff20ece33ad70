"""``workbench serve``: a playground in the browser and an OpenAI-compatible API with per-request steering.

* ``app``: the FastAPI application (routes, API key, limits, errors), ``serve`` (the command) and ``running``
  (a server in a background thread, for tests and benchmarks);
* ``openai_api``: ``/v1/completions`` and ``/v1/chat/completions``, streaming (SSE) or not, steered per request;
* ``engine``: the one worker thread that runs all model work and batches requests with different steering;
* ``registry``: the specs of the spec directory, loaded and unloaded at runtime;
* ``playground``: directions, comparisons, saving and exporting behind the page at ``/`` (``static/``);
* ``text``: token counting and incremental decoding with stop strings.
"""

__all__ = ["ServeConfig", "create_app", "build_state", "serve", "running"]

from workbench.serve.app import ServeConfig, build_state, create_app, running, serve
