"""One timed call through each real moderation client (`wildguard-lite bench clients`).

    wildguard-lite bench clients --model toy-wildguard-q8_0.gguf --litellm

Against a `serve` child process: plain HTTP, the OpenAI SDK, openai-guardrails and, with
`--litellm`, LiteLLM's proxy with our guardrails (`pip install 'wildguard-lite[test-clients]'`):
the median of `--repeats` calls after a warm-up, for a benign and a harmful prompt, and each
client's decision. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from wildguard_lite.flags import add_runtime_flags

from .litellm_proxy import GUARDRAIL_NAMES, litellm_chat, litellm_config, litellm_proxy
from .traffic import PROMPTS, RESPONSES, ServerProcess, add_report_arguments, report, threads_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="a .gguf file to serve")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per client and prompt (default 10)")
    p.add_argument("--litellm", action="store_true", help="also start LiteLLM's proxy (about a minute)")
    add_runtime_flags(p, "threads")
    add_report_arguments(p)


def run(args: argparse.Namespace) -> int:
    return report(measure(args), args.json_out)


def measure(args) -> dict[str, Any]:
    """One call through each client against a server on `--model`, timed: the median of
    `--repeats` calls after one warm-up, for a benign and a harmful prompt."""
    import tempfile
    from dataclasses import dataclass
    from importlib.metadata import version

    import httpx
    import openai

    key = "bench-key-" + "k" * 22
    workdir = Path(tempfile.mkdtemp(prefix="wildguard-clients-"))
    (workdir / "key").write_text(key + "\n", encoding="utf-8")
    server = ServerProcess(
        ["--model", str(args.model), "--api-key-file", str(workdir / "key"), *threads_args(args.threads)]
    )
    prompts = {"benign": PROMPTS[0], "harmful": PROMPTS[3]}
    out: dict[str, Any] = {"model": str(args.model), "repeats": args.repeats, "ms_median": {}, "decisions": {}}

    def timed(name: str, call) -> None:
        for label, prompt in prompts.items():
            call(prompt)  # warm-up
            times, decision = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                decision = call(prompt)
                times.append(time.perf_counter() - start)
            out["ms_median"][f"{name}/{label}"] = round(statistics.median(times) * 1000, 1)
            out["decisions"][f"{name}/{label}"] = decision

    # Each client is made once and reused, as an application would (connections kept alive).
    http = httpx.Client(timeout=120)
    loop = asyncio.new_event_loop()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        timed(
            "http /v1/moderations",
            lambda p: http.post(f"{server.url}/v1/moderations", json={"input": p}, headers=auth).json()["results"][0][
                "flagged"
            ],
        )
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        timed(f"openai-python {openai.__version__}", lambda p: sdk.moderations.create(input=p).results[0].flagged)
        try:
            from guardrails import check_plain_text
        except ImportError:
            check_plain_text = None
        if check_plain_text is not None:

            @dataclass
            class Ctx:
                guardrail_llm: Any

            bundle = {"version": 1, "guardrails": [{"name": "Moderation", "config": {"categories": ["illicit"]}}]}

            ctx = Ctx(openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0))

            async def check(prompt: str) -> bool:
                results = await check_plain_text(prompt, bundle, ctx=ctx, suppress_tripwire=True)
                return results[0].tripwire_triggered

            timed(f"openai-guardrails {version('openai-guardrails')}", lambda p: loop.run_until_complete(check(p)))
        if args.litellm:
            replies = {"mock-benign": RESPONSES[2]}
            with litellm_proxy(litellm_config(server.url, key, replies), workdir) as proxy:
                name = f"litellm {version('litellm')}"
                timed(f"{name} no guardrail", lambda p: litellm_chat(proxy, "mock-benign", p, [], http).status_code)
                for label, guard in (
                    ("openai_moderation pre_call", GUARDRAIL_NAMES["moderation"]),
                    ("generic pre+post_call", GUARDRAIL_NAMES["generic"]),
                ):
                    timed(
                        f"{name} {label}",
                        lambda p, g=guard: litellm_chat(proxy, "mock-benign", p, [g], http).status_code,
                    )
    finally:
        http.close()
        loop.close()
        server.stop()
    out["load_average_1min"] = os.getloadavg()[0]
    return out
