"""The examples of docs/embedding.md run as written (asyncio; Qt when PySide6 is installed), on
a marker classifier whose engine calls take a little time, so cancellations really interrupt
work in flight."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import pytest

from server_fakes import HARMFUL, MarkerBackend, build_tokenizer
from wildguard_lite.runtime import Classifier

DOC = Path(__file__).resolve().parents[1] / "docs" / "embedding.md"


def example(name: str) -> dict:
    """Execute the doc's ```python block that starts with `# example: NAME`; its namespace."""
    blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    code = next((text for text, tag in blocks if tag == name), None)
    assert code is not None, f"no '# example: {name}' block in {DOC}"
    namespace: dict = {"__name__": f"embedding_{name}"}
    exec(compile(code, f"{DOC}:{name}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


class SlowMarkers(MarkerBackend):
    def __init__(self, tokenizer, seconds):
        super().__init__(tokenizer)
        self.seconds, self.calls = seconds, 0
        self.entered = threading.Event()

    def next_logits(self, ids):
        self.entered.set()
        time.sleep(self.seconds)
        self.calls += 1
        return super().next_logits(ids)


def slow_classifier(tokenizer, seconds=0.02):
    backend = SlowMarkers(tokenizer, seconds)
    return Classifier(backend, tokenizer), backend


def test_asyncio_example_stops_a_harmful_answer(tokenizer):
    ns = example("asyncio")
    clf, _ = slow_classifier(tokenizer, 0.0)
    words = (
        "Here is a calm opening about the weather and the river towns that goes on for a while "
        f"before it turns {HARMFUL} and then keeps going with more text after that point"
    ).split(" ")

    async def chunks():
        for i in range(0, len(words), 2):
            yield " ".join(words[i : i + 2]) + " "

    shown, verdict = asyncio.run(ns["moderated_answer"](clf, "a question", chunks()))
    assert verdict["flagged"] and verdict["response_harmfulness"] == "harmful"
    assert HARMFUL not in "".join(shown)  # the harmful chunk was never shown
    assert len(shown) < len(words) // 2


def test_asyncio_example_deadline_and_latest_draft(tokenizer):
    ns = example("asyncio")
    clf, backend = slow_classifier(tokenizer, 0.3)
    # One engine call takes 0.3 s: a 0.05 s budget runs out, and the call is stopped.
    assert asyncio.run(ns["check_draft"](clf, "hello", budget_s=0.05)) is None
    backend.seconds = 0.01
    assert asyncio.run(ns["check_draft"](clf, f"{HARMFUL} hello"))["prompt_harmfulness"] == "harmful"
    # Five quick edits: the stale checks are cancelled, the last draft's verdict comes back.
    backend.calls = 0
    backend.seconds = 0.05
    drafts = ["h", "he", "hel", "hell", f"{HARMFUL} hello"]
    verdict = asyncio.run(ns["latest_draft_only"](clf, drafts))
    assert verdict["prompt_harmfulness"] == "harmful"
    assert backend.calls < len(drafts)  # stale drafts were dropped before (or instead of) running


def test_qt_example_keeps_only_the_latest_verdict(tokenizer):
    pytest.importorskip("PySide6")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QCoreApplication, QTimer

    ns = example("qt")
    app = QCoreApplication.instance() or QCoreApplication([])
    clf, backend = slow_classifier(tokenizer, 0.2)
    moderator = ns["Moderator"](clf)
    received, ticks = [], []
    moderator.verdict.connect(
        lambda text, verdict: (received.append((text, verdict, threading.get_ident())), app.quit())
    )
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start(10)
    QTimer.singleShot(10_000, app.quit)  # a safety net: the assertions below say what went wrong
    # The user types three texts quickly: the first check is in the engine, the second waits
    # for it and is cancelled before it starts, only the last one's verdict is shown.
    moderator.check("a")
    assert backend.entered.wait(10)
    moderator.check("ab")
    moderator.check(f"{HARMFUL} abc")
    app.exec()
    heartbeat.stop()
    moderator.stop()
    assert [(t, v["prompt_harmfulness"]) for t, v, _ in received] == [(f"{HARMFUL} abc", "harmful")]
    assert received[0][2] == threading.get_ident()  # delivered on the UI thread
    assert backend.calls == 2  # the second text never reached the engine
    assert len(ticks) >= 5  # the UI thread kept running during the checks
