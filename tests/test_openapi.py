"""/openapi.json, fuzzed with schemathesis (the real fuzzer, its CLI) against the server over
the marker backend: no 5xx, every status, content type and body as the schema documents, and
bodies outside the schema refused."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis", reason="schemathesis is in the [dev] extra")

from server_fakes import build_tokenizer, marker_app, running  # noqa: E402

# Statuses the checks accept beyond their defaults, and why:
SCHEMATHESIS_CONFIG = """
[checks]
enabled = true  # every check schemathesis has

[checks.negative_data_rejection]
# 413: a list over --max-items (the schema's maxItems) is refused as too large, as documented
expected-statuses = ["400", "408", "413", "422", "429"]

[checks.positive_data_acceptance]
# 413: an input longer than the context fits the schema (no schema can count tokens)
expected-statuses = ["2xx", "413", "429"]

[[operations]]
include-path = "/beta/litellm_basic_guardrail_api"
# LiteLLM's API: fields the server does not use are accepted whatever their type (LiteLLM
# sends more than it reads), so a body outside the schema is not always refused.
checks.negative_data_rejection.enabled = false
"""
EXAMPLES = 25  # per operation and phase: about 20 s on 2 busy cores


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_openapi_schema_is_served(tokenizer):
    from fastapi.testclient import TestClient

    with TestClient(marker_app(tokenizer, max_items=4)) as client:
        schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/v1/moderations",
        "/v1/classify",
        "/beta/litellm_basic_guardrail_api",
        "/health",
        "/metrics",
    }
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["items"]["maxItems"] == 4  # from the settings, not a copy


def test_schemathesis_finds_no_server_errors_or_schema_violations(tokenizer, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    with running(marker_app(tokenizer, max_items=4, n_ctx=4096)) as url:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "--no-color",
                "run",
                f"{url}/openapi.json",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                "1",
                "--workers",
                "1",
                "--report",
                "ndjson",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )  # its replay cache goes there
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # It did test every operation (a schema that lists nothing would pass too).
    events = [json.loads(line) for line in next(tmp_path.glob("*.ndjson")).read_text().splitlines()]
    assert len([e for e in events if "ScenarioFinished" in e]) >= 5, proc.stdout[-3000:]
