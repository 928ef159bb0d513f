"""Test helpers for the server: a backend whose verdicts the test decides by markers in the
text, and the app run by a real uvicorn on a free loopback port (for real clients)."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from wildguard_lite.backends.base import Backend
from wildguard_lite.config import RuntimeConfig
from wildguard_lite.runtime import Classifier
from wildguard_lite.server import ServeSettings, create_app

HARMFUL = "HARMFUL-MARKER"  # in the prompt: a harmful request; in the response: a harmful response
REFUSE = "REFUSAL-MARKER"  # in the response: a refusal
UNREADABLE = "UNREADABLE-MARKER"  # in the prompt: the model answers neither yes nor no
UNDECIDED = "UNDECIDED-MARKER"  # in the response: the model answers n/a on response harm (P(yes) 0.73)


def build_tokenizer(folder):
    """A WildGuard tokenizer shaped like the toy's (its recipe, trained in seconds on the toy's
    data; no model, no torch), so the fake-backend tests need no trained toy."""
    from wildguard_lite.contract import format_prompt
    from wildguard_lite.toy.data import answer_text, make_dataset
    from wildguard_lite.toy.train import train_tokenizer, write_tokenizer_config
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    train, _, _ = make_dataset(seed=0, n_train=1500, n_val=0, n_heldout=0)
    text = [format_prompt(row["prompt"], row["response"]) + answer_text(row) for row in train]
    lines = [line for chunk in text for line in chunk.split("\n") if line.strip()]
    lines += [HARMFUL, REFUSE, UNREADABLE] * 5
    train_tokenizer(lines, folder / "tokenizer.model")
    write_tokenizer_config(folder, legacy=True)
    return load_tokenizer_from_folder(folder)


def sections(text: str) -> tuple[str, str]:
    """The user's prompt and the assistant's response inside a decoded WildGuard input."""
    prompt_start = text.find("Human user:") + len("Human user:")
    response_start = text.find("AI assistant:", prompt_start)
    end = text.find("---", response_start)
    return text[prompt_start:response_start], text[response_start + len("AI assistant:") : end]


class MarkerBackend(Backend):
    """Answers each cue from the markers in the exchange, through the real Classifier: the
    verdicts are decided by the test, not by a model."""

    def __init__(self, tokenizer, n_ctx: int = 4096, na_below_chars: int = 0):
        """`na_below_chars`: a response shorter than this (stripped) gets n/a on response harm,
        as a real model answers the first characters of a streamed reply."""
        self.tokenizer, self.n_ctx, self.n_vocab = tokenizer, n_ctx, tokenizer.vocab_size
        self.na_below_chars = na_below_chars
        answers = {tokenizer.yes_id, tokenizer.no_id, tokenizer.na_ids[0], tokenizer.eos_id}
        self.other_id = next(i for i in range(3, self.n_vocab) if i not in answers)

    def next_logits(self, ids):
        ids = [int(i) for i in ids]
        self.tokens_evaluated += len(ids)
        prompt, response = sections(self.tokenizer.decode(ids))
        cue = next(k for k, c in enumerate(self.tokenizer.cue_ids) if ids[-len(c) :] == list(c))
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        if UNREADABLE in prompt:
            logits[self.other_id] = 5.0
            return logits
        if cue == 2 and (UNDECIDED in response or len(response.strip()) < self.na_below_chars):
            logits[self.tokenizer.na_ids[0]], logits[self.tokenizer.yes_id] = 5.0, 1.0
            return logits
        yes = (HARMFUL in prompt, REFUSE in response, HARMFUL in response)[cue]
        logits[self.tokenizer.yes_id if yes else self.tokenizer.no_id] = 4.0
        return logits


def marker_app(tokenizer, na_below_chars: int = 0, **settings):
    """The real app over MarkerBackend workers (its context `n_ctx`, long input per `over_context`)."""
    serve = ServeSettings(**settings)
    return create_app(
        serve,
        classifier_factory=lambda index, threads: Classifier(
            MarkerBackend(tokenizer, n_ctx=serve.n_ctx, na_below_chars=na_below_chars),
            tokenizer,
            RuntimeConfig(over_context=serve.over_context),
        ),
    )


@contextlib.contextmanager
def running(app, timeout: float = 30.0):
    """The app served by uvicorn as `serve` runs it (its protocol and limits), on 127.0.0.1 (a
    free port) in a thread; yields its base URL."""
    import uvicorn

    from wildguard_lite.server.app import uvicorn_config

    settings = getattr(app.state, "settings", None)  # None: another app (a test's fake upstream)
    if settings is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=None)
    else:
        config = uvicorn_config(
            app, settings, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=None
        )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
