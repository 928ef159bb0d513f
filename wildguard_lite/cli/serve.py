"""wildguard-lite serve --model FILE [--host 127.0.0.1] [--port 8000] [--workers N] [--max-queue M] [--api-key-file F]

A moderation HTTP API: POST /v1/moderations (OpenAI shape), POST /v1/classify (native),
POST /beta/litellm_basic_guardrail_api (LiteLLM's Generic Guardrail API), GET /health,
GET /metrics (Prometheus). Binds 127.0.0.1 unless told otherwise. See docs/serving.md;
--ray serves the same API with model replicas on a Ray cluster (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import sys

from . import run


def build_parser() -> argparse.ArgumentParser:
    from ..server.settings import add_arguments

    p = argparse.ArgumentParser(
        prog="wildguard-lite serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return p


def _serve(args) -> int:
    from ..errors import ModelFileError
    from ..server import serve
    from ..server.settings import from_args

    if not args.model.exists():
        raise ModelFileError(f"{args.model}: no such model file; make one with 'wildguard-lite convert'")
    settings = from_args(args)
    if settings.ray is not None:  # model replicas on a Ray cluster, this process the front
        from ..server.fleet import run as run_fleet

        run_fleet(settings)
    else:
        serve(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(_serve, args)


if __name__ == "__main__":
    sys.exit(main())
