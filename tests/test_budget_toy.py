"""On the trained toy with the real engine: a harmful text padded to ~200 kB against
`--timeout 1` is answered 200 and flagged through /v1/moderations and the guardrail, and
blocked by the real clients that pass on errors: openai-guardrails (an HTTP error reads "not
tripped") and LiteLLM with `unreachable_fallback: fail_open` (a 502/503/504 passes)."""

import asyncio
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from server_fakes import running  # noqa: E402
from wildguard_lite.server import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "test-key-" + "k" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
PAD = "The river runs slowly past the old mill, and the baker opens at seven every morning. "


def padded(harmful: str, size: int = 200_000) -> str:
    half = PAD * (size // 2 // len(PAD))
    return f"{half}{harmful} {half}"


def guardrails_tripped(url: str, text: str) -> bool:
    openai = pytest.importorskip("openai")
    pytest.importorskip("guardrails", reason="needs the 'test-clients' extra (openai-guardrails)")
    from guardrails import check_plain_text

    @dataclass
    class Ctx:
        guardrail_llm: object

    async def check():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        bundle = {"version": 1, "guardrails": [{"name": "Moderation", "config": {"categories": ["illicit"]}}]}
        results = await check_plain_text(text, bundle, ctx=Ctx(client), suppress_tripwire=True)
        await client.close()
        return results[0].tripwire_triggered

    return asyncio.run(check())


@pytest.mark.slow
def test_a_padded_harmful_text_over_the_deadline_is_flagged_by_every_client(toy_gguf, heldout, tmp_path):
    harmful = next(r["prompt"] for r in heldout if r.get("prompt_harm_label") == "harmful")
    text = padded(harmful)
    assert 190_000 < len(text.encode()) < 210_000
    app = create_app(ServeSettings(model=toy_gguf["q8_0"], threads=1, request_timeout_s=1, api_key=KEY))
    with running(app, timeout=120) as url:
        moderation = httpx.post(f"{url}/v1/moderations", json={"input": text}, headers=AUTH, timeout=60)
        guardrail = httpx.post(
            f"{url}/beta/litellm_basic_guardrail_api",
            json={"input_type": "request", "texts": [text]},
            headers=AUTH,
            timeout=60,
        )
        assert moderation.status_code == 200, moderation.text[:300]
        result = moderation.json()["results"][0]
        assert result["flagged"] and result["wildguard"]["not_judged"]["reason"] in ("too_long", "deadline")
        assert guardrail.status_code == 200 and guardrail.json()["action"] == "BLOCKED"
        assert guardrails_tripped(url, text)
        litellm_blocks(url, text, tmp_path)


def litellm_blocks(url: str, text: str, tmp_path) -> None:
    import sys
    from pathlib import Path

    from wildguard_lite.benchmarks.litellm_proxy import GUARDRAIL_NAMES, litellm_chat, litellm_config, litellm_proxy

    if not (Path(sys.executable).parent / "litellm").exists():
        pytest.skip("LiteLLM's proxy is not installed (the 'test-clients' extra)")
    config = litellm_config(url, KEY, {"mock-benign": "Water boils at 100 C."})
    for guardrail in config["guardrails"]:  # pass the request whenever the guardrail errs
        guardrail["litellm_params"]["unreachable_fallback"] = "fail_open"
    with litellm_proxy(config, tmp_path) as proxy:
        for name in ("moderation", "generic"):
            reply = litellm_chat(proxy, "mock-benign", text, [GUARDRAIL_NAMES[name]])
            assert reply.status_code == 400, (name, reply.status_code, reply.text[:300])
