"""Build and cache the toy WildGuard: data (toy/data.py), tokenizer and training (toy/train.py),
held-out evaluation, and a folder in the Hugging Face layout written atomically."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from wildguard_lite.utils import publishable
from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import MissingDependencyError, WildGuardLiteError, require
from wildguard_lite.toy.data import augmented_heldout, make_dataset, neutral_suffixed, tokenizer_lines
from wildguard_lite.toy.train import (
    TARGET_ACCURACY,
    accuracy,
    classify_hardened,
    encode_rows,
    label_flips,
    model_config,
    train_model,
    train_tokenizer,
    write_json,
    write_tokenizer_config,
)

# Bump whenever the recipe (data, tokenizer, model, training) changes: it keys the cache.
# 5: adversarial augmentation; training on the runtime's hardened ids.
TOY_VERSION = 5
# The held-out files a build writes beside the weights (WildGuardTest layout).
HELDOUT_FILES = {"plain": "heldout.jsonl", "augmented": "heldout_augmented.jsonl"}


def _console(quiet: bool):
    if quiet:
        return lambda *args: None
    try:
        from rich.console import Console

        console = Console(stderr=True)
        return lambda msg: console.print(f"[dim]toy[/dim] {msg}", highlight=False)
    except ImportError:  # rich is a core dependency, but progress must never break a build
        import sys

        return lambda msg: print(f"toy {msg}", file=sys.stderr)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate(out: Path, seed: int, heldout: list[dict[str, Any]], log) -> dict[str, Any]:
    """Held-out accuracy with the official procedure; accuracy on the augmented held-out split
    (hardened ids, as the runtime reads them); verdicts moved by one appended neutral sentence."""
    from wildguard_lite.reference import TransformersReference
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    reference = TransformersReference(out, device="cpu")
    ours = load_tokenizer_from_folder(out)
    augmented = augmented_heldout(heldout, seed)
    write_jsonl(out / HELDOUT_FILES["augmented"], augmented)
    suffixed_rows = neutral_suffixed(heldout, seed)
    total = len(heldout) + len(augmented) + len(suffixed_rows)
    log(
        f"evaluating {total} held-out rows by greedy generation (plain: official procedure; augmented: "
        "hardened ids; plain + a neutral sentence)"
    )
    progress = EvaluationProgress(total, log)
    plain = progress.run("plain", reference.classify, heldout)
    aug = progress.run("augmented", lambda rows: classify_hardened(reference, ours, rows), augmented)
    by_kind = {
        kind: accuracy(
            [r for r in augmented if r["augmentation"] == kind],
            [res for r, res in zip(augmented, aug) if r["augmentation"] == kind],
        )
        for kind in sorted({r["augmentation"] for r in augmented})
    }
    suffixed = progress.run("neutral sentence", reference.classify, suffixed_rows)
    return {
        "accuracy": accuracy(heldout, plain),
        "accuracy_augmented": accuracy(augmented, aug),
        "accuracy_augmented_by_kind": by_kind,
        "neutral_suffix_flips": label_flips(plain, suffixed),
    }


class EvaluationProgress:
    """Runs per-row work in chunks and logs rows done, time and an estimate of the time left
    (the evaluation is minutes of greedy generation: it must not look hung)."""

    def __init__(self, total: int, log, chunk: int = 60):
        self.total, self.done, self.log, self.chunk = total, 0, log, chunk
        self.start = time.monotonic()

    def run(self, what: str, fn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for i in range(0, len(rows), self.chunk):
            results += fn(rows[i : i + self.chunk])  # rows are independent: chunking changes no result
            self.done += len(rows[i : i + self.chunk])
            elapsed = time.monotonic() - self.start
            left = elapsed / self.done * (self.total - self.done)
            self.log(f"evaluating ({what}): {self.done}/{self.total} rows, {elapsed:.0f} s, ~{_duration(left)} left")
        return results


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def write_tokenizer(out: Path, train_rows: list[dict[str, Any]], legacy: bool) -> None:
    """The toy's SentencePiece model trained on `train_rows`, and its tokenizer configs."""
    train_tokenizer(tokenizer_lines(train_rows), out / "tokenizer.model")
    write_tokenizer_config(out, legacy)


def build_tokenizer(out_dir, *, seed: int = 0, legacy: bool = True) -> Path:
    """The toy's tokenizer alone in `out_dir` (tokenizer.model, tokenizer_config.json,
    special_tokens_map.json): the pieces a toy build of `seed` trains, in seconds, without
    torch or a model (a stand-in's vocabulary needs nothing more)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, _, _ = make_dataset(seed)
    write_tokenizer(out, train, legacy)
    return out


def _build(out: Path, seed: int, legacy: bool, log) -> dict[str, Any]:
    """Write a complete toy into the (empty) folder `out`; returns the report."""
    torch = require("torch", "convert")
    transformers = require("transformers", "convert")
    safetensors_torch = require("safetensors.torch", "convert")
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    start = time.monotonic()
    random.seed(seed)
    train, val, heldout = make_dataset(seed)
    log(
        f"dataset: {len(train)} train, {len(val)} validation, {len(heldout)} held-out rows "
        f"({sum('augmentation' in r for r in train)} train rows augmented)"
    )
    write_tokenizer(out, train, legacy)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(out), use_fast=False)
    except ImportError as exc:  # legacy=false needs protobuf
        raise MissingDependencyError(f"cannot load the toy tokenizer: {exc}") from None
    ours = load_tokenizer_from_folder(out)
    vocab_size = len(tokenizer)
    log(f"tokenizer: {vocab_size} pieces, legacy={legacy}")
    train_ex, val_ex = encode_rows(tokenizer, ours, train), encode_rows(tokenizer, ours, val)
    model, info = train_model(train_ex, val_ex, vocab_size, seed, log)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    safetensors_torch.save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", model_config(vocab_size))
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False})
    write_jsonl(out / HELDOUT_FILES["plain"], heldout)
    train_s = time.monotonic() - start
    results = evaluate(out, seed, heldout, log)
    acc = results["accuracy"]
    report = {
        "toy_version": TOY_VERSION,
        "seed": seed,
        "legacy": legacy,
        **results,
        "passed": all(acc[k] >= TARGET_ACCURACY for k in LABEL_KEYS),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab_size,
        "n_train": len(train),
        "n_validation": len(val),
        "n_heldout": len(heldout),
        **info,
        "build_s": round(time.monotonic() - start, 1),
        "evaluate_s": round(time.monotonic() - start - train_s, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    write_json(out / "toy_report.json", report)
    log(
        f"held-out accuracy: {acc}; augmented: {results['accuracy_augmented']}; neutral suffix moved "
        f"{results['neutral_suffix_flips']['rows']}/{len(heldout)} rows; build {report['build_s']} s"
    )
    if not report["passed"]:
        log(f"[yellow]warning: held-out accuracy below {TARGET_ACCURACY}[/yellow]")
    return report


def build_toy(out_dir, *, seed: int = 0, legacy: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Build the toy WildGuard into `out_dir` (replacing an earlier toy there) and return its
    report. Built in a temporary folder next to it and renamed at the end, so `out_dir` is
    never half-written."""
    out = _toy_target(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        report = _build(tmp, seed, legacy, _console(quiet))
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def provide_toy(
    out_dir, *, seed: int = 0, legacy: bool = True, rebuild: bool = False, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    """The toy in `out_dir` for the fewest minutes: kept if `out_dir` already holds this
    version, seed and legacy flag; for seed 0 copied from the cache (`ensure_toy`, which builds
    it there on first use, for the tests and the demo too); built otherwise, or when `rebuild`.
    Returns the toy's report and which of "kept", "copied from the cache", "built" it was."""
    out = _toy_target(out_dir)
    if not rebuild:
        report = _toy_report(out)
        if report is not None and report["seed"] == seed and _legacy_flag(out) == legacy:
            return report, "kept"
        if seed == 0:
            source = ensure_toy(legacy, quiet=quiet)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            try:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                _install(tmp, out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return json.loads((out / "toy_report.json").read_text(encoding="utf-8")), "copied from the cache"
    return build_toy(out, seed=seed, legacy=legacy, quiet=quiet), "built"


def _toy_target(out_dir) -> Path:
    """`out_dir`, resolved, its parent made; refused when it holds something other than a toy."""
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "toy_report.json").exists())):
        raise WildGuardLiteError(f"{out}: exists and is not a toy build; choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _toy_report(folder: Path) -> dict[str, Any] | None:
    """The report of a toy of this TOY_VERSION in `folder`, else None (absent, older, unreadable)."""
    try:
        report = json.loads((folder / "toy_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("toy_version") == TOY_VERSION else None


def _legacy_flag(folder: Path) -> bool | None:
    # The tokenizer's flag, not the report's: the nonlegacy variant is a copy with only it flipped.
    try:
        return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("legacy")
    except (OSError, ValueError):
        return None


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing an earlier toy there."""
    publishable(tmp)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "toy")
        shutil.rmtree(old)
    os.rename(tmp, out)


def toy_cache_dir() -> Path:
    """$WILDGUARD_LITE_CACHE, else $XDG_CACHE_HOME/wildguard-lite, else ~/.cache/wildguard-lite."""
    if os.environ.get("WILDGUARD_LITE_CACHE"):
        return Path(os.environ["WILDGUARD_LITE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "wildguard-lite"


def ensure_toy(legacy: bool = True, *, quiet: bool = False) -> Path:
    """Path of the cached toy, built on first use (seed 0; about 10 minutes on 2 idle cores).

    The legacy=False variant is a copy of the legacy=True build with only the tokenizer's
    `legacy` flag flipped: same weights (trained on legacy=True ids) and same report. Safe
    against concurrent builders: each builds in its own temporary folder and the first
    rename wins; later ones discard theirs.
    """
    cache = toy_cache_dir()
    path = cache / (f"toy-v{TOY_VERSION}" if legacy else f"toy-v{TOY_VERSION}-nonlegacy")
    if (path / "toy_report.json").exists():
        return path
    source = None if legacy else ensure_toy(True, quiet=quiet)
    cache.mkdir(parents=True, exist_ok=True)
    # A killed builder leaves its temporary folder behind; a build takes minutes, not hours.
    for stale in cache.glob(".toy-*.tmp-*"):
        if time.time() - stale.stat().st_mtime > 3 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=cache))
    try:
        if source is None:
            _build(tmp, 0, True, _console(quiet))
        else:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
            config["legacy"] = False
            write_json(tmp / "tokenizer_config.json", config)
        publishable(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "toy_report.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
