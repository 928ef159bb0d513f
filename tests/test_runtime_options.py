"""Every RuntimeConfig field reaches the classifier on every path: the library (`load`, batch
jobs), the CLI (one exchange, a batch file, --ray), Ray actors and `serve`; and each bound is
checked once, with one message, whichever path it came by.

The engine is a fake (no model file): `loading.open_model`, where every path's RuntimeConfig
meets an engine, is replaced by one that records the config and opens a fake engine with it.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from wildguard_lite import loading
from wildguard_lite.config import RUNTIME_FIELDS, RuntimeConfig
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.flags import FLAGS
from wildguard_lite.runtime import Classifier

# field -> (a value other than the default, the CLI flags that set it)
VALUES = {
    "mode": ("generate", ["--mode", "generate"]),
    "threads": (3, ["--threads", "3"]),
    "n_ctx": (2048, ["--n-ctx", "2048"]),
    "max_new_tokens": (20, ["--max-new-tokens", "20"]),
    "flash_attn": (False, ["--no-flash-attn"]),
    "use_mmap": (False, ["--no-mmap"]),
    "repack": (True, ["--repack"]),
    "thresholds": ({"response_harmfulness": 0.3}, ["--threshold", "response_harmfulness=0.3"]),
    "one_pass": (False, ["--no-one-pass"]),
    "slots": (3, ["--slots", "3"]),
    "kv_tokens": (5000, ["--kv-tokens", "5000"]),
    "over_context": ("error", ["--over-context", "error"]),
    "kv_type": ("q8_0", ["--kv-type", "q8_0"]),
}
# Fields whose values above cannot all be set at once: a q8_0 KV cache needs flash attention.
TOGETHER = [name for name in VALUES if name != "kv_type"]
DEFAULTS = RuntimeConfig()


def test_every_field_has_a_flag_and_a_row_here():
    assert set(FLAGS) == set(RUNTIME_FIELDS), "one runtime flag per RuntimeConfig field (wildguard_lite/flags.py)"
    assert set(VALUES) == set(RUNTIME_FIELDS), "a new RuntimeConfig field needs its row in VALUES"
    assert all(getattr(DEFAULTS, name) != value for name, (value, _) in VALUES.items())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from server_fakes import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def opened(tokenizer, monkeypatch):
    """The configs `open_model` was given, each opening a fake engine."""
    from wildguard_lite.benchmarks.batch import EchoBackend

    seen: list[RuntimeConfig] = []

    def open_model(path, config, prefix_cache=None, legacy=None):
        seen.append(config)
        return Classifier(EchoBackend(tokenizer, config.n_ctx), tokenizer, config)

    monkeypatch.setattr(loading, "open_model", open_model)
    return seen


def _cli(argv: list[str]) -> None:
    from wildguard_lite.cli import main

    assert main(argv) == 0


def _library(model, tmp_path, name, value, argv):
    loading.load(model, **{name: value}).close()
    loading.load(model, RuntimeConfig(**{name: value})).close()


def _library_batch(model, tmp_path, name, value, argv):
    from wildguard_lite.batch import run_batch

    run_batch(_input(tmp_path), tmp_path / "out.jsonl", model, RuntimeConfig(**{name: value}))


def _cli_single(model, tmp_path, name, value, argv):
    _cli(["classify", "--model", str(model), "--prompt", "hello", "--nice", "0", *argv])


def _cli_file(model, tmp_path, name, value, argv):
    src, out = _input(tmp_path), tmp_path / "o.jsonl"
    _cli(["classify", "--model", str(model), "--input", str(src), "--output", str(out), *argv])


def _ray(model, tmp_path, name, value, argv):
    """What Ray does with map_batches_options: build each actor from its constructor kwargs."""
    from wildguard_lite.ray_data import WildGuardPredictor, map_batches_options

    pytest.importorskip("ray.data")
    kwargs = map_batches_options(model, RuntimeConfig(**{name: value}))["fn_constructor_kwargs"]
    WildGuardPredictor(**kwargs).clf.close()


def _serve(model, tmp_path, name, value, argv):
    TestClient = pytest.importorskip("fastapi.testclient").TestClient
    from wildguard_lite.cli.serve import build_parser
    from wildguard_lite.server import create_app
    from wildguard_lite.server.settings import from_args

    settings = from_args(build_parser().parse_args(["--model", str(model), "--prefix-cache-mb", "0", *argv]))
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200


def _input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "hello", "response": "hi there"}) + "\n", encoding="utf-8")
    return src


PATHS = {
    "library": _library,
    "library-batch": _library_batch,
    "cli-single": _cli_single,
    "cli-file": _cli_file,
    "ray": _ray,
    "serve": _serve,
}


@pytest.mark.parametrize("name", sorted(VALUES))
@pytest.mark.parametrize("path", sorted(PATHS))
def test_the_field_reaches_the_classifier(path, name, opened, tmp_path):
    value, argv = VALUES[name]
    PATHS[path](tmp_path / "model.gguf", tmp_path, name, value, argv)
    assert opened, "no classifier was opened"
    for config in opened:
        assert getattr(config, name) == value, (path, name, config)


def test_cli_ray_hands_its_flags_to_the_actors(opened, tmp_path, monkeypatch):
    """classify --ray: the config built from the flags is the one each actor loads with."""
    pytest.importorskip("ray.data")
    from wildguard_lite import ray_data
    from wildguard_lite.batch import BatchReport

    def classify_file_on_ray(input, output, model, config=None, *, address, actors, batch_size, **options):
        kwargs = ray_data.map_batches_options(model, config, actors=actors, batch_size=batch_size or 1)
        ray_data.WildGuardPredictor(**kwargs["fn_constructor_kwargs"]).clf.close()
        return BatchReport()

    monkeypatch.setattr(ray_data, "classify_file_on_ray", classify_file_on_ray)
    argv = [arg for name in TOGETHER for arg in VALUES[name][1]]
    src, out = _input(tmp_path), tmp_path / "o.jsonl"
    _cli(["classify", "--model", str(tmp_path / "m.gguf"), "--input", str(src), "--output", str(out), "--ray", *argv])
    (config,) = opened
    assert {name: getattr(config, name) for name in TOGETHER} == {name: VALUES[name][0] for name in TOGETHER}


# -- one check and one message per bound, whichever path it came by -------------------------------
BOUNDS = [
    ({"threads": 0}, ["--threads", "0"], r"threads must be between 1 and 512, got 0"),
    ({"slots": 0}, ["--slots", "0"], r"slots must be between 1 and 64, got 0"),
    ({"slots": 65}, ["--slots", "65"], r"slots must be between 1 and 64, got 65"),
    ({"kv_tokens": 100}, ["--kv-tokens", "100"], r"kv_tokens must be between 4096 and \d+, got 100"),
    (
        {"kv_type": "q8_0", "flash_attn": False},
        ["--kv-type", "q8_0", "--no-flash-attn"],
        r"kv_type 'q8_0' needs flash_attn",
    ),
]


@pytest.mark.parametrize("options, argv, message", BOUNDS)
def test_one_message_per_bound(options, argv, message, opened, tmp_path, capsys):
    from wildguard_lite.cli import main
    from wildguard_lite.server.settings import ServeSettings

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")  # serve refuses a missing file first
    for attempt in (
        lambda: RuntimeConfig(**options),
        lambda: loading.load(model, **options),
        lambda: ServeSettings(**options),
        lambda: ServeSettings(runtime=dataclasses.replace(DEFAULTS, **options)),
    ):
        with pytest.raises(InvalidInputError, match=message):
            attempt()
    for command in (["classify", "--model", str(model), "--prompt", "x"], ["serve", "--model", str(model)]):
        assert main([*command, *argv]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and re.search(message, last), last
    assert not opened
