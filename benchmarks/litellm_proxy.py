"""LiteLLM's proxy as a child process, configured with wildguard-lite's guardrails: used by the
`clients` benchmark and by tests/test_clients.py (`pip install 'wildguard-lite[test-clients]'`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .traffic import free_port

LITELLM_MASTER_KEY = "sk-" + "m" * 40  # the proxy refuses to start without one (local use only)
GUARDRAIL_NAMES = {"moderation": "wg-moderation", "generic": "wg-generic", "generic_post": "wg-generic-post"}


def litellm_config(url: str, api_key: str, replies: dict[str, str]) -> dict[str, Any]:
    """A LiteLLM proxy config: one mock upstream per reply (`mock_response` in litellm_params:
    no network) and our guardrails, each off by default and picked per request by name:
    `openai_moderation` in pre_call, `generic_guardrail_api` in pre+post_call and post_call alone."""

    def guardrail(name: str, kind: str, mode, base: str) -> dict[str, Any]:
        return {
            "guardrail_name": name,
            "litellm_params": {
                "guardrail": kind,
                "mode": mode,
                "api_base": base,
                "api_key": api_key,
                "default_on": False,
            },
        }

    return {
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": "openai/mock", "api_key": "sk-unused", "mock_response": reply},
            }
            for name, reply in replies.items()
        ],
        "guardrails": [
            guardrail(GUARDRAIL_NAMES["moderation"], "openai_moderation", "pre_call", f"{url}/v1"),
            guardrail(GUARDRAIL_NAMES["generic"], "generic_guardrail_api", ["pre_call", "post_call"], url),
            guardrail(GUARDRAIL_NAMES["generic_post"], "generic_guardrail_api", "post_call", url),
        ],
    }


@contextlib.contextmanager
def litellm_proxy(config: dict[str, Any], workdir: Path, timeout: float = 240.0, exe: str | None = None):
    """LiteLLM's proxy (the `litellm` command beside this Python, or `exe`: another version's)
    as a child process on a free loopback port, offline; yields its base URL and stops it on exit."""
    import httpx

    exe = Path(exe) if exe else Path(sys.executable).parent / "litellm"
    if not exe.exists():
        raise FileNotFoundError(f"{exe}: LiteLLM's proxy is not installed (pip install 'wildguard-lite[test-clients]')")
    path = workdir / "litellm.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(config), encoding="utf-8")
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    log_path = workdir / "litellm.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"LiteLLM's proxy did not start; its log ends:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def litellm_chat(proxy: str, model: str, prompt: str, guardrails: list[str], http=None):
    """A chat completion through the proxy with the named guardrails (`http`: an httpx.Client
    to reuse its connection)."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "guardrails": guardrails}
    return (http or httpx).post(
        f"{proxy}/chat/completions", json=body, timeout=120, headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
    )
