"""n/a with a response present never passes silently, on every endpoint: the Classifier decides
the label from P(yes) over yes/no (`na_resolved`), and each endpoint reads that label. A fake
engine answers " n/a" at the response-harm cue with the yes/no logits the test chooses."""

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from server_fakes import MarkerBackend, build_tokenizer, sections

from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.server import ServeSettings, create_app
from wildguard_lite.server.guardrail import GUARDRAIL_PATH, UNDECIDED_MAX_CHARS

NA_YES = "NA-LEANS-YES"  # in the response: n/a at the harm cue, yes above no
NA_NO = "NA-LEANS-NO"  # n/a, no above yes


class NaBackend(MarkerBackend):
    def next_logits(self, ids):
        logits = super().next_logits(ids)
        ids = [int(i) for i in ids]
        _, response = sections(self.tokenizer.decode(ids))
        harm_cue = list(self.tokenizer.cue_ids[2])
        if ids[-len(harm_cue) :] == harm_cue and (NA_YES in response or NA_NO in response):
            logits[:] = 0.0
            logits[self.tokenizer.na_ids[0]] = 6.0
            yes, no = (3.0, 1.0) if NA_YES in response else (1.0, 3.0)
            logits[self.tokenizer.yes_id], logits[self.tokenizer.no_id] = yes, no
        return logits


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    app = create_app(ServeSettings(), classifier_factory=lambda i, t: Classifier(NaBackend(tok), tok, RuntimeConfig()))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("marker, harmful", [(NA_YES, True), (NA_NO, False)])
def test_na_with_a_response_is_decided_on_every_endpoint(client, marker, harmful):
    item = {"prompt": "a question", "response": f"an answer {marker}"}
    native = client.post("/v1/classify", json={"items": [item]}).json()["results"][0]
    assert native["response_harmfulness"] == ("harmful" if harmful else "unharmful")
    assert native["na_resolved"] == ["response_harmfulness"] and not native["is_parsing_error"]
    assert (native["scores"]["response_harmfulness"] > 0.5) is harmful
    moderation = client.post("/v1/moderations", json={"input": [item]}).json()["results"][0]
    assert moderation["flagged"] is harmful and moderation["categories"]["harmful_response"] is harmful
    assert moderation["wildguard"]["na_resolved"] == ["response_harmfulness"]

    def guard(response: str) -> dict:
        body = {
            "input_type": "response",
            "texts": [response],
            "structured_messages": [{"role": "user", "content": item["prompt"]}],
        }
        return client.post(GUARDRAIL_PATH, json=body).json()

    # Past UNDECIDED_MAX_CHARS the guardrail decides an n/a as a final verdict does.
    long = guard("word " * (UNDECIDED_MAX_CHARS // 5 + 1) + item["response"])
    assert long["action"] == ("BLOCKED" if harmful else "NONE")
    if harmful:
        assert "the model answered n/a" in long["blocked_reason"]
    # A short reply (the start of a stream) the model cannot decide yet is held back whole,
    # neither blocked nor released (docs/integrations.md).
    short = guard(item["response"])
    assert short["action"] == "NONE"
    if harmful:
        assert short["stream_holdback_chars"] == [len(item["response"])]
