"""`wildguard-lite serve`: a moderation HTTP API on a worker pool.

Modules: `settings` (every option, declared once; no web framework imported), `pool` (the
worker threads, admission and the shared prefix cache), `moderation` (OpenAI's
`/v1/moderations` schema), `guardrail` (LiteLLM's Generic Guardrail API), `metrics`
(Prometheus), `errors` (error answers, shared input checks) and `app` (the FastAPI app and
`serve()`). Importing this package does not import FastAPI; `create_app` does.
"""

from ..defaults import available_cores
from .settings import ServeSettings, read_api_key


def create_app(*args, **kwargs):
    from .app import create_app as make

    return make(*args, **kwargs)


def serve(settings: ServeSettings) -> None:
    from .app import serve as run

    run(settings)


__all__ = ["ServeSettings", "available_cores", "create_app", "read_api_key", "serve"]
