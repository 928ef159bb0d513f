"""Session fixtures: the trained toy (cached across sessions by ensure_toy) and its GGUFs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """The tests exercise this checkout: the package and the folders setuptools maps into it
    (convert/, benchmarks/) must come from here, i.e. an editable install."""
    import importlib

    expected = {
        "wildguard_lite": ROOT / "wildguard_lite",
        "wildguard_lite.convert": ROOT / "convert",
        "wildguard_lite.benchmarks": ROOT / "benchmarks",
    }
    for name, folder in expected.items():
        try:
            found = Path(importlib.import_module(name).__file__).parent
        except ImportError as exc:
            found = f"not importable ({exc})"
        if found != folder:
            raise pytest.UsageError(
                f"{name} is {found}, not this checkout's {folder}: the tests run against an "
                f"editable install of the checkout: pip install -e '.[all]' (see CONTRIBUTING.md)"
            )


# Fixtures that build or load the trained toy (minutes the first time, torch): any test using
# one, directly or through another fixture, is `slow`. `pytest -m "not slow"` is the fast tier.
TOY_FIXTURES = {"toy_dir", "toy_dir_nonlegacy", "toy_gguf", "heldout", "reference"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TOY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def toy_dir() -> Path:
    from wildguard_lite.toy import ensure_toy

    return ensure_toy()


@pytest.fixture(scope="session")
def toy_dir_nonlegacy(toy_dir) -> Path:
    from wildguard_lite.toy import ensure_toy

    return ensure_toy(legacy=False)


@pytest.fixture(scope="session")
def toy_gguf(toy_dir, tmp_path_factory) -> dict:
    """{"manifest": ..., "f16": path, "q8_0": path, "q4_k_m": path} converted once per session."""
    from rich.console import Console

    from wildguard_lite.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("toy-gguf")
    manifest = convert_checkpoint(
        ConvertOptions(source=str(toy_dir), out_dir=out, quants=("f16", "q8_0", "q4_k_m"), name="toy"),
        console=Console(quiet=True),
    )
    files = {a["quant"]: out / a["file"] for a in manifest["artifacts"]}
    return {"manifest": manifest, "dir": out, **files}


@pytest.fixture(scope="session")
def heldout(toy_dir) -> list[dict]:
    with open(toy_dir / "heldout.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def reference(toy_dir):
    from wildguard_lite.reference import TransformersReference

    return TransformersReference(toy_dir, device="cpu")
