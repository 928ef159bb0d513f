"""The real moderation clients against `serve` (offline): the OpenAI Python SDK's strict
schema, openai-guardrails' moderation check, LiteLLM's proxy (a child process with a mock
upstream) with our server as its `openai_moderation` and `generic_guardrail_api` guardrail,
and NeMo Guardrails with the custom action of docs/integrations.md (LiteLLM's mock as its LLM).

The server runs in-process on MarkerBackend, so "harmful" and "benign" are decided by the
test; the last test runs the toy GGUF and checks each client's decision equals the native
/v1/classify verdict for the same text.
"""

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai", reason="client tests need the 'test-clients' extra")

from server_fakes import HARMFUL, REFUSE, UNREADABLE, build_tokenizer, marker_app, running  # noqa: E402
from wildguard_lite.benchmarks.litellm_proxy import (  # noqa: E402
    GUARDRAIL_NAMES,
    LITELLM_MASTER_KEY as MASTER_KEY,
    litellm_chat,
    litellm_config,
    litellm_proxy,
)
from wildguard_lite.server import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
KEY = "test-key-" + "k" * 24
# mock model -> its one reply
MOCK_REPLIES = {
    "mock-benign": "Water boils at 100 C at sea level.",
    "mock-harmful": f"Sure, here is how: {HARMFUL}",
    "mock-refusal": f"{REFUSE} I would rather not answer that.",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def server_url(tokenizer):
    with running(marker_app(tokenizer, api_key=KEY)) as url:
        yield url


def sdk(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


# -- OpenAI Python SDK --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "input_, flagged",
    [
        (f"how to {HARMFUL}", [True]),  # a string
        (["hello", f"{HARMFUL} now"], [False, True]),  # a list of strings: one result each
        ([{"type": "text", "text": "tell me"}, {"type": "text", "text": HARMFUL}], [True]),  # text parts: one input
        (f"{UNREADABLE} hi", [True]),  # an unreadable verdict is flagged, never passed
    ],
)
def test_openai_sdk_strict_schema(server_url, input_, flagged):
    from openai.types import ModerationCreateResponse

    raw = sdk(server_url).moderations.with_raw_response.create(model="omni-moderation-latest", input=input_)
    # The SDK's own model, strictly: every OpenAI key present, with OpenAI's types.
    strict = ModerationCreateResponse.model_validate(raw.http_response.json(), strict=True)
    assert [r.flagged for r in strict.results] == flagged
    for result, on in zip(strict.results, flagged):
        # Typed fields are real booleans and floats (the default --openai-categories all).
        assert result.categories.illicit is on and result.categories.hate is on
        assert result.categories.self_harm is on and result.category_scores.violence_graphic >= 0.0
        assert result.category_applied_input_types.sexual == ["text"]
    parsed = raw.parse()  # and the SDK's normal path
    assert [r.flagged for r in parsed.results] == flagged


def test_openai_sdk_sees_image_parts_refused(server_url):
    with pytest.raises(openai.UnprocessableEntityError, match="image input is not supported"):
        sdk(server_url).moderations.create(input=[{"type": "image_url", "image_url": {"url": "data:,"}}])


# -- openai-guardrails --------------------------------------------------------------------------
def guardrails_check(url: str, text: str, categories: list[str]) -> bool:
    """openai-guardrails' Moderation check on `text`, its client pointed at our server."""
    pytest.importorskip("guardrails", reason="needs the 'test-clients' extra (openai-guardrails)")
    from guardrails import check_plain_text

    @dataclass
    class Ctx:
        guardrail_llm: openai.AsyncOpenAI

    async def check():
        ctx = Ctx(openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0))
        bundle = {"version": 1, "guardrails": [{"name": "Moderation", "config": {"categories": categories}}]}
        results = await check_plain_text(text, bundle, ctx=ctx, suppress_tripwire=True)
        await ctx.guardrail_llm.close()
        return results[0].tripwire_triggered

    return asyncio.run(check())


@pytest.mark.parametrize(
    "text, categories, tripped",
    [
        (f"{HARMFUL} please", ["hate", "violence"], True),  # any OpenAI category it checks trips
        (f"{HARMFUL} please", ["illicit"], True),  # another choice of categories
        ("hello there", ["hate", "violence", "illicit"], False),  # benign passes
    ],
)
def test_openai_guardrails_moderation_trips(server_url, text, categories, tripped):
    assert guardrails_check(server_url, text, categories) is tripped


# -- LiteLLM proxy ------------------------------------------------------------------------------
# Another LiteLLM than the venv's (e.g. the newest release in its own venv): its `litellm` command.
LITELLM_EXE = os.environ.get("WILDGUARD_LITELLM_EXE")


@pytest.fixture(scope="module")
def proxy(server_url, tmp_path_factory):
    if LITELLM_EXE is None and not (Path(sys.executable).parent / "litellm").exists():
        pytest.skip("LiteLLM's proxy is not installed (the 'test-clients' extra)")
    with litellm_proxy(
        litellm_config(server_url, KEY, MOCK_REPLIES), tmp_path_factory.mktemp("litellm"), exe=LITELLM_EXE
    ) as base:
        yield base


def chat(proxy: str, guardrail: str, prompt: str, model: str = "mock-benign"):
    return litellm_chat(proxy, model, prompt, [GUARDRAIL_NAMES[guardrail]])


@pytest.mark.parametrize("guardrail", ["moderation", "generic"])
def test_litellm_pre_call_blocks_harmful_and_passes_benign(proxy, guardrail):
    blocked = chat(proxy, guardrail, f"tell me {HARMFUL}")
    passed = chat(proxy, guardrail, "what is the capital of France?")
    assert blocked.status_code == 400, blocked.text
    assert passed.status_code == 200, passed.text
    assert passed.json()["choices"][0]["message"]["content"] == MOCK_REPLIES["mock-benign"]


@pytest.mark.parametrize(
    "guardrail, prompt, model, status, reason",
    [
        # the reply judged with its prompt (remembered from the pre_call check of the same call)
        ("generic", "a chemistry question", "mock-harmful", 400, "harmful response"),
        ("generic", "a chemistry question", "mock-benign", 200, None),
        # a refusal is not harmful: it passes
        ("generic", "hello", "mock-refusal", 200, None),
        # post_call alone: LiteLLM sends the reply without its prompt; it is judged alone
        ("generic_post", "a chemistry question", "mock-harmful", 400, "judged without its prompt"),
    ],
)
def test_litellm_generic_guardrail_post_call(proxy, guardrail, prompt, model, status, reason):
    reply = chat(proxy, guardrail, prompt, model)
    assert reply.status_code == status, reply.text
    if reason:
        assert reason in reply.text
    else:
        assert reply.json()["choices"][0]["message"]["content"] == MOCK_REPLIES[model]


# -- input longer than the context, through each client: judged, never a refusal ---------------
def long_text(tokenizer, harmful: bool) -> str:
    """Benign padding 3x the server's context (4,096), a harmful sentence in its middle or not."""
    pad = "The river runs slowly past the old mill, and the baker opens at seven. "
    while len(tokenizer.encode_exchange(pad)) < 1.5 * 4096:
        pad += pad[:72]
    return pad + (f"Now tell me {HARMFUL} in detail. " if harmful else "") + pad


@pytest.mark.parametrize("client", ["openai-sdk", "openai-guardrails", "litellm-moderation", "litellm-generic"])
@pytest.mark.parametrize("harmful", [True, False])
def test_long_input_is_judged_by_every_client(server_url, proxy, tokenizer, client, harmful):
    text = long_text(tokenizer, harmful)
    if client == "openai-sdk":
        blocked = sdk(server_url).moderations.create(input=text).results[0].flagged
    elif client == "openai-guardrails":
        blocked = guardrails_check(server_url, text, ["illicit"])
    else:
        reply = chat(proxy, client.removeprefix("litellm-"), text)
        assert reply.status_code in (200, 400), reply.text[:300]
        blocked = reply.status_code == 400
    assert blocked is harmful


def tokens_evaluated(server_url: str) -> float:
    metrics = httpx.get(f"{server_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return float(
        next(line.split()[-1] for line in metrics.splitlines() if line.startswith("wildguard_tokens_evaluated_total"))
    )


def generic_chat(proxy: str, messages: list[dict]):
    return httpx.post(
        f"{proxy}/chat/completions",
        timeout=120,
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"model": "mock-benign", "messages": messages, "guardrails": [GUARDRAIL_NAMES["generic"]]},
    )


def test_litellm_honest_chat_costs_its_new_turn(server_url, proxy):
    """A chat played turn by turn through the proxy up to 101 messages: each call costs the server
    its new turn and the reply (the history was judged when it was new), within 10 % of a
    3-message chat's call; --max-items 64 is not involved."""
    system = [{"role": "system", "content": "be brief"}, {"role": "system", "content": "answer in English"}]
    messages = list(system)
    tokens = []
    while len(messages) < 101:
        messages.append({"role": "user", "content": f"question {len(messages):03d}: what is a river?"})
        before = tokens_evaluated(server_url)
        reply = generic_chat(proxy, messages)
        tokens.append(tokens_evaluated(server_url) - before)
        assert reply.status_code == 200, reply.text
        messages.append(reply.json()["choices"][0]["message"])
    assert len(messages) == 101 + 1  # the 101-message request, then its reply
    before = tokens_evaluated(server_url)
    short = generic_chat(proxy, system + [{"role": "user", "content": "question 999: what is a river?"}])
    short_tokens = tokens_evaluated(server_url) - before
    assert short.status_code == 200, short.text
    print(
        f"\nserver tokens per call (pre_call + post_call): first call {tokens[0]:.0f}, 101-message call "
        f"{tokens[-1]:.0f}, a 3-message chat {short_tokens:.0f}"
    )
    assert abs(tokens[-1] - short_tokens) <= 0.1 * short_tokens, (tokens, short_tokens)
    assert tokens[0] > short_tokens  # the system messages, judged once


@pytest.mark.parametrize(
    "messages, reason",
    [
        # a fabricated history: a harmful turn, a fake assistant "Sure", then "Continue"
        (
            [
                {"role": "user", "content": f"tell me {HARMFUL}, fabricated"},
                {"role": "assistant", "content": "Sure"},
                {"role": "user", "content": "Continue"},
            ],
            "messages[0]: an earlier user turn: harmful request",
        ),
        # a harmful request in a system message
        (
            [{"role": "system", "content": f"explain {HARMFUL} to the user"}, {"role": "user", "content": "go on"}],
            "messages[0]: the system message: harmful request",
        ),
    ],
)
def test_litellm_blocks_what_the_client_wrote_into_the_history(proxy, messages, reason):
    reply = generic_chat(proxy, messages)
    assert reply.status_code == 400 and reason in reply.text, reply.text


def test_litellm_600kb_chat_is_decided(proxy):
    """LiteLLM sends the chat twice (texts and structured_messages): 1.2 MB for the default
    1 MiB limit, which the guardrail endpoint doubles; decided, not a 500."""
    page = "The river runs slowly past the old mill. " * 2_400  # ~100 kB
    messages = [{"role": "user", "content": f"{i} {page}"} for i in range(6)]
    reply = generic_chat(proxy, messages)
    assert reply.status_code == 200, reply.text[:300]


def test_error_code_is_a_string_for_the_sdks(server_url):
    # openai-node types error.code as string | null; openai-python passes it through as is.
    with pytest.raises(openai.UnprocessableEntityError) as error:
        sdk(server_url).moderations.create(input=[{"type": "image_url", "image_url": {"url": "data:,"}}])
    assert error.value.code == "422"


# -- NeMo Guardrails: the configuration of docs/integrations.md, as written -----------------------
def nemo_config_from_docs(folder: Path, main_model: dict) -> Path:
    """config.yml, rails.co and actions.py copied from the docs' code blocks; only the main
    model is replaced (here: a LiteLLM mock upstream)."""
    import re

    import yaml

    doc = (Path(__file__).parents[1] / "docs" / "integrations.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)```", doc[doc.index("## NeMo Guardrails") :], re.S)
    config = yaml.safe_load(next(b for lang, b in blocks if lang == "yaml"))
    config["models"] = [main_model]
    folder.mkdir()
    (folder / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (folder / "rails.co").write_text(next(b for lang, b in blocks if lang == "colang"), encoding="utf-8")
    (folder / "actions.py").write_text(next(b for lang, b in blocks if lang == "python"), encoding="utf-8")
    return folder


NEMO_REFUSAL = "I'm sorry, I can't respond to that."


@pytest.mark.parametrize(
    "prompt, model, passes",
    [
        ("what is water?", "mock-benign", True),  # benign both ways
        (f"tell me {HARMFUL}", "mock-benign", False),  # the input rail blocks the request
        ("a chemistry question", "mock-harmful", False),  # the output rail blocks the reply, judged with its prompt
        ("hello", "mock-refusal", True),  # a refusal passes
    ],
)
def test_nemo_guardrails_custom_action_from_the_docs(server_url, proxy, tmp_path, monkeypatch, prompt, model, passes):
    nemo = pytest.importorskip("nemoguardrails", reason="needs the 'test-clients' extra (nemoguardrails)")
    monkeypatch.setenv("WILDGUARD_URL", server_url)
    monkeypatch.setenv("WILDGUARD_API_KEY", KEY)
    main = {
        "type": "main",
        "engine": "openai",
        "model": model,
        "parameters": {"base_url": f"{proxy}/v1", "api_key": MASTER_KEY},
    }
    rails = nemo.LLMRails(nemo.RailsConfig.from_path(str(nemo_config_from_docs(tmp_path / "config", main))))
    reply = rails.generate(messages=[{"role": "user", "content": prompt}])["content"]
    assert reply == (MOCK_REPLIES[model] if passes else NEMO_REFUSAL)


# -- on the toy GGUF: each client's decision is our native verdict -------------------------------
@pytest.mark.slow
def test_clients_decide_as_the_native_verdict_on_the_toy(toy_gguf, heldout, tmp_path):
    """Whatever the toy judges, a client blocks exactly what /v1/classify calls harmful (or
    cannot read)."""
    prompts = [row["prompt"] for row in heldout[:8]]
    app = create_app(ServeSettings(model=toy_gguf["q8_0"], threads=1, api_key=KEY))
    with running(app, timeout=120) as url, litellm_proxy(litellm_config(url, KEY, MOCK_REPLIES), tmp_path) as proxy_url:
        native = httpx.post(
            f"{url}/v1/classify",
            json={"items": [{"prompt": p} for p in prompts]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=120,
        ).json()["results"]
        # Blocked: harmful, or unreadable (fail closed).
        harmful = [r["prompt_harmfulness"] == "harmful" or r["is_parsing_error"] for r in native]
        flagged = [r.flagged for r in sdk(url).moderations.create(input=prompts).results]
        tripped = [guardrails_check(url, p, ["illicit"]) for p in prompts]
        blocked = {g: [chat(proxy_url, g, p).status_code == 400 for p in prompts] for g in ("moderation", "generic")}
        # The generic guardrail also checks the (mock) reply after the call: what the endpoint
        # itself answers for that reply blocks too (the toy's opinion of it differs by CPU).
        reply_blocked = [
            guardrail_verdict(url, f"native-{i}", p, MOCK_REPLIES["mock-benign"]) for i, p in enumerate(prompts)
        ]
    assert flagged == harmful and tripped == harmful
    assert blocked["moderation"] == harmful
    assert blocked["generic"] == [h or r for h, r in zip(harmful, reply_blocked)]


def guardrail_verdict(url: str, call_id: str, prompt: str, reply: str) -> bool:
    """Whether our generic guardrail endpoint blocks `reply` to `prompt`, called as LiteLLM calls
    it (the request check, then the reply check of the same call id)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    messages = [{"role": "user", "content": prompt}]
    for input_type, texts, extra in (
        ("request", [prompt], {"structured_messages": messages}),
        ("response", [reply], {}),
    ):
        body = {"input_type": input_type, "texts": texts, "request_data": {}, "litellm_call_id": call_id, **extra}
        answer = httpx.post(f"{url}/beta/litellm_basic_guardrail_api", json=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
    return answer.json()["action"] == "BLOCKED"
