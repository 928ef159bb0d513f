"""Datasets in the WildGuardTest layout (local JSONL/CSV/Parquet, or the hub when reachable), and
the benchmarks' JSON reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS, LABEL_VALUES
from wildguard_lite.errors import InvalidInputError, WildGuardLiteError, require

COLUMNS = (
    "prompt",
    "response",
    "adversarial",
    "prompt_harm_label",
    "response_refusal_label",
    "response_harm_label",
    "subcategory",
)
# The context the benchmarks measure under (the figures in docs/measurements.md): shorter than
# the library's default, which only sizes the KV cache; every input here fits.
N_CTX = 2048
HUB_DATASET = ("allenai/wildguardmix", "wildguardtest", "test")
# The gold column of each label, in contract.LABEL_KEYS' order, and the values it may hold.
GOLD_COLUMNS = ("prompt_harm_label", "response_refusal_label", "response_harm_label")
_LABELS = {column: tuple(LABEL_VALUES[key].values()) for key, column in zip(LABEL_KEYS, GOLD_COLUMNS)}


def _clean(value: Any) -> Any:
    # CSV and Parquet carry missing values as "", NaN or None.
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    return value


def _normalise(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    out = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str):
            raise InvalidInputError(
                f"{where} row {n}: needs a 'prompt' string (WildGuardTest layout: {', '.join(COLUMNS)})"
            )
        item = {c: _clean(row.get(c)) for c in COLUMNS}
        item["prompt"] = row["prompt"]
        if item["response"] is not None and not isinstance(item["response"], str):
            raise InvalidInputError(f"{where} row {n}: 'response' must be a string or empty")
        for column, allowed in _LABELS.items():
            if item[column] is not None and item[column] not in allowed:
                raise InvalidInputError(
                    f"{where} row {n}: '{column}' is {item[column]!r}; expected one of {allowed} or empty"
                )
        adv = item["adversarial"]
        item["adversarial"] = adv if isinstance(adv, bool) else str(adv).lower() in ("true", "1", "yes")
        out.append(item)
    if not out:
        raise InvalidInputError(f"{where}: no rows")
    return out


def load_rows(source: str) -> list[dict[str, Any]]:
    """Rows of a dataset file (.jsonl, .csv, .parquet) or `allenai/wildguardmix` from the hub."""
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as exc:
                            raise InvalidInputError(f"{path} line {n}: invalid JSON ({exc})") from None
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix == ".parquet":
            pq = require("pyarrow.parquet", "bench")
            rows = pq.read_table(path).to_pylist()
        else:
            raise InvalidInputError(f"{path}: unknown dataset type '{suffix}'; use .jsonl, .csv or .parquet")
        return _normalise(rows, str(path))
    if source in ("wildguardtest", HUB_DATASET[0]):
        try:
            import datasets
        except ImportError:
            raise WildGuardLiteError(
                "loading WildGuardTest from the hub needs the datasets library: pip install datasets"
            ) from None
        try:
            ds = datasets.load_dataset(HUB_DATASET[0], HUB_DATASET[1], split=HUB_DATASET[2])
        except Exception as exc:  # network, auth (the dataset is gated) and cache errors alike
            raise WildGuardLiteError(
                f"{HUB_DATASET[0]} ({HUB_DATASET[1]}): cannot load from the hub ({type(exc).__name__}: {exc}); "
                "download it where the hub is reachable and pass the file"
            ) from None
        return _normalise(list(ds), HUB_DATASET[0])
    raise InvalidInputError(f"{source}: no such dataset file (or pass 'wildguardtest' to load it from the hub)")


def to_item(row: dict[str, Any]) -> dict[str, Any]:
    """The classifier's input for a dataset row (response absent when empty)."""
    return {"prompt": row["prompt"], **({"response": row["response"]} if row.get("response") else {})}


def write_json(path: Path, data: Any) -> None:
    """A report, written atomically (temp file, then rename), its folder made if missing."""
    from wildguard_lite.convert.manifest import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
