"""`serve --ray` on a real local Ray cluster started here (2 CPUs, replicas of 1 thread): the
front's API over model replicas, conversation affinity (tokens per call stay those of one
box, and round-robin costs more), a replica killed mid-traffic (no failed request, verdicts
those of one-shot classify), and the errors: too few CPUs, a model the replicas cannot load,
an unreachable head, Ray missing."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pickle
import statistics
import subprocess
import sys
import threading
import time
import types
import uuid

import pytest

import wildguard_lite
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InvalidInputError, MissingDependencyError, WildGuardLiteError
from wildguard_lite.server import ServeSettings

from server_fakes import running

httpx = pytest.importorskip("httpx")


def test_replicas_need_ray():
    with pytest.raises(InvalidInputError, match="--replicas needs --ray"):
        ServeSettings(replicas=2)


def test_cli_unreachable_head_is_one_line(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wildguard_lite.cli.serve",
            "--model",
            str(model),
            "--port",
            "0",
            "--ray",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ray 127.0.0.1:1: cannot reach a Ray head there" in lines[0], done.stderr


def test_ray_missing_names_the_extra(monkeypatch):
    from wildguard_lite.server import fleet

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"wildguard-lite\[fleet\]"):
        fleet.connect("local")


def test_replica_errors_keep_their_type_and_message():
    from wildguard_lite.errors import InputTooLongError
    from wildguard_lite.server import fleet

    report = (
        "The deployment failed to start 3 times in a row. Error:\n  File ...\n"
        "wildguard_lite.errors.ModelFileError: /m.gguf: not a GGUF file (bad magic); pass a .gguf"
    )
    assert fleet.replica_error(report) == "/m.gguf: not a GGUF file (bad magic); pass a .gguf"
    assert fleet.replica_error("RuntimeError: boom\n") == "RuntimeError: boom"
    original = InputTooLongError(5000, 4096, "items[0]")
    rebuilt = fleet.rebuilt_error(("InputTooLongError", str(original), 5000, 4096))
    assert isinstance(rebuilt, InputTooLongError) and str(rebuilt) == str(original)
    assert (rebuilt.n_tokens, rebuilt.limit) == (5000, 4096)
    assert type(fleet.rebuilt_error(("InvalidInputError", "bad"))) is InvalidInputError


def test_fleet_counters_sum_the_latest_count_of_each_replica():
    from wildguard_lite.server.fleet import FleetCounters

    counters = FleetCounters()
    counters.record("a", 100)
    counters.record("b", 40)
    counters.record("a", 90)  # a reply that overtook a later one: counts never go back
    counters.record("a", 130)
    assert counters.tokens_evaluated == 170


ray = pytest.importorskip("ray", reason="the [fleet] extra is not installed")
fleet = pytest.importorskip("wildguard_lite.server.fleet")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def settings(toy_gguf):
    return ServeSettings(model=toy_gguf["q8_0"], ray="auto", replicas=2, threads=1, workers=4, slots=4)


@pytest.fixture
def front():
    """A function that deploys the replicas and runs the front: yields (url, app)."""
    stack = []

    def start(settings):
        app, started = fleet.start(settings)
        stack.append((settings, started))
        return app

    yield start
    for settings, started in stack:
        fleet.stop(settings, started)


def replica_names():
    from ray.util import list_named_actors

    return [a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")]


@pytest.mark.slow
def test_too_few_cpus_names_a_fitting_combination(ray_cluster, settings):
    with pytest.raises(
        InvalidInputError, match=r"--replicas 3 x --threads 1 needs 3 CPUs.*Use --replicas 2 --threads 1"
    ):
        fleet.start(dataclasses.replace(settings, replicas=3))


@pytest.mark.slow
def test_a_model_the_replicas_cannot_load_fails_with_its_error(ray_cluster, settings, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    start = time.monotonic()
    with pytest.raises(WildGuardLiteError, match=r"the replicas could not start: .*bad\.gguf: not a GGUF file"):
        fleet.start(dataclasses.replace(settings, model=bad, replicas=1))
    # Ray tries a failing replica 3 times, then gives up: minutes on a busy machine, never for ever.
    assert time.monotonic() - start < 900


class InProcessReplica:
    """A deployment handle whose replica is a classifier in this process: the plans go through
    pickle as they go through Ray."""

    def __init__(self, clf):
        self.clf = clf

    def options(self, **_):
        return self

    def remote(self, plans):
        plans = pickle.loads(pickle.dumps(plans))
        results = self.clf.classify_planned(plans)
        reply = {"replica": "r0", "results": results, "tokens_evaluated": self.clf.backend.tokens_evaluated}
        return types.SimpleNamespace(result=lambda timeout_s: reply)


@pytest.mark.slow
def test_the_front_plans_as_the_model_does_and_a_replica_runs_its_plans(toy_gguf):
    """The front holds only the file's tokenizer: its plans (a long input's windows included)
    and token counts are the loaded model's, and a replica running them gives classify's verdicts."""
    long_text = "Tell me about the history of bread baking in northern Europe. " * 60
    items = [
        {"prompt": "How do I bake bread?"},
        {"prompt": "How do I bake bread?", "response": "Mix flour, water, salt and yeast."},
        {"prompt": long_text, "response": "It is a long story."},
    ]
    settings = ServeSettings(model=toy_gguf["q8_0"], n_ctx=512, threads=1)
    with wildguard_lite.load(toy_gguf["q8_0"], settings.runtime) as clf:
        expected = clf.classify(items)
        plans = clf.plan(items)
        assert plans[2].windows is not None  # the long one is judged in windows
        with wildguard_lite.load(toy_gguf["q8_0"], settings.runtime) as replica:
            front = fleet.FrontClassifier(InProcessReplica(replica), settings)
            assert front.plan(items) == plans and front.plan_tokens(plans) == clf.plan_tokens(plans)
            got: dict[int, dict] = {}
            results = front.classify_planned(front.plan(items), on_result=got.__setitem__, key="session:x")
            assert front.backend.tokens_evaluated == replica.backend.tokens_evaluated > 0
    assert got == dict(enumerate(results))
    for ours, theirs in zip(results, expected):
        same_verdict(ours, theirs)
    with pytest.raises(WildGuardLiteError, match="holds no model"):
        front.engine.logits_at([1, 2], [1])


def conversation(rounds: int, words: int = 30):
    """A prompt and its answer growing by `words` words a round."""
    prompt = "How do I look after a sourdough starter through the winter?"
    text = "Keep it somewhere warm and feed it flour and water every day until it bubbles. " * 20
    chunks = text.split(" ")
    return prompt, [" ".join(chunks[: words * (k + 1)]) for k in range(rounds)]


def tokens_per_call(url, app_counter, prompt, answers, headers=None) -> list[int]:
    """Tokens the model(s) evaluated for each call of one conversation, sent one after another."""
    costs = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for answer in answers:
            before = app_counter()
            r = client.post(
                "/v1/moderations", json={"input": [{"prompt": prompt, "response": answer}]}, headers=headers or {}
            )
            assert r.status_code == 200, r.text
            costs.append(app_counter() - before)
    return costs


@pytest.mark.slow
def test_affinity_keeps_a_conversation_on_its_replica(ray_cluster, settings, front, toy_gguf):
    """Two replicas, one conversation: each call costs what it costs on one box (its new
    tokens and WildGuard's constant). Round-robin (affinity off) sends every other call to the
    replica that saw the conversation two calls ago, so the calls cost more: this test's
    assertion fails when affinity is broken."""
    rounds = 7
    with wildguard_lite.load(toy_gguf["q8_0"], threads=1, slots=4) as clf:
        prompt, answers = conversation(rounds)
        one_box = []
        for answer in answers:
            before = clf.backend.tokens_evaluated
            clf.classify([{"prompt": prompt, "response": answer}])
            one_box.append(clf.backend.tokens_evaluated - before)
    measured = {}
    for affinity in ("on", "off"):
        app = front(dataclasses.replace(settings, affinity=affinity))
        counter = lambda app=app: app.state.fleet.backend.tokens_evaluated  # noqa: E731
        with running(app, timeout=120) as url:
            measured[affinity] = {
                "derived": tokens_per_call(url, counter, prompt, answers),
                "session": tokens_per_call(
                    url, counter, prompt + " (2)", answers, headers={"X-Session-Id": uuid.uuid4().hex}
                ),
            }
        fleet.stop(dataclasses.replace(settings, affinity=affinity), False)
    steady = statistics.mean(one_box[1:])
    for source in ("derived", "session"):
        assert statistics.mean(measured["on"][source][1:]) <= 1.1 * steady + 2, (source, measured, one_box)
        # Round-robin alternates replicas: half the calls re-evaluate two rounds of answer.
        assert statistics.mean(measured["off"][source][1:]) > 1.2 * steady, (source, measured, one_box)


def same_verdict(ours, theirs):
    """Same labels; P(yes) within 0.02 (another batch composition, another KV history)."""
    assert [ours[k] for k in LABEL_KEYS] == [theirs[k] for k in LABEL_KEYS], (ours, theirs)
    for key in LABEL_KEYS:
        a, b = ours["scores"][key], theirs["scores"][key]
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 0.02), (key, a, b)


@pytest.mark.slow
def test_a_replica_killed_mid_traffic_loses_no_request(ray_cluster, settings, front, toy_gguf, heldout):
    n, rounds = 8, 5
    exchanges = [
        (row["prompt"], (row.get("response") or "I can help with that. " * 8).split(" ")) for row in heldout[:n]
    ]
    calls = [
        [{"prompt": p, "response": " ".join(words[: max(1, len(words) * (k + 1) // rounds)])} for k in range(rounds)]
        for p, words in exchanges
    ]
    app = front(settings)
    failures, replies = [], {}
    killed = threading.Event()
    with running(app, timeout=120) as url, httpx.Client(base_url=url, timeout=300) as client:

        def talk(i):
            for k, item in enumerate(calls[i]):
                r = client.post("/v1/classify", json={"items": [item]}, headers={"X-Session-Id": f"conv-{i}"})
                if r.status_code != 200:
                    failures.append((i, k, r.status_code, r.text))
                    return
                replies[(i, k)] = r.json()["results"][0]
                if k == 1 and not killed.is_set():
                    killed.set()
                    ray.kill(ray.get_actor(replica_names()[0], namespace="serve"), no_restart=True)

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(talk, range(n)))
    assert killed.is_set() and not failures, failures
    assert len(replies) == n * rounds
    with wildguard_lite.load(toy_gguf["q8_0"], threads=1) as clf:
        for (i, k), got in sorted(replies.items()):
            same_verdict(got, clf.classify([calls[i][k]])[0])
