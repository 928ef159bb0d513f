"""Per-label operating points on P(yes): validation, the CLI's LABEL=P specs, relabelling.

Thresholds only move the reported label: the model is always conditioned on its own greedy
answers, so the other labels and the scores do not change.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .contract import LABEL_KEYS, LABEL_VALUES
from .errors import InvalidInputError


def validate_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Check `{label: threshold}` (labels from LABEL_KEYS, numbers in [0, 1]); None or {} is
    WildGuard's argmax."""
    if not thresholds:
        return None
    if not isinstance(thresholds, Mapping):
        raise InvalidInputError(
            f"thresholds must be a mapping of label to P(yes) threshold, got {type(thresholds).__name__}"
        )
    checked = {}
    for label, value in thresholds.items():
        if label not in LABEL_KEYS:
            raise InvalidInputError(f"unknown label '{label}' in thresholds; choose from {', '.join(LABEL_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise InvalidInputError(
                f"threshold for {label} must be a number from 0 to 1 (P(yes) at or above it reads 'yes'), got {value!r}"
            )
        checked[label] = float(value)
    return checked


def parse_threshold_specs(specs: Sequence[str] | None) -> dict[str, float] | None:
    """`["LABEL=P", ...]` (the CLI's --threshold) -> validated `{label: P}`; None when empty."""
    parsed: dict[str, Any] = {}
    for spec in specs or ():
        label, sep, value = spec.partition("=")
        label = label.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise InvalidInputError(f"--threshold '{spec}': expected LABEL=P, e.g. response_harmfulness=0.3")
        if label in parsed:
            raise InvalidInputError(f"--threshold: {label} is given twice")
        parsed[label] = number
    return validate_thresholds(parsed)


def apply_thresholds(result: dict[str, Any], thresholds: Mapping[str, float] | None) -> dict[str, Any]:
    """Relabel, in place, each thresholded label the model answered yes/no (it has a score);
    n/a and unreadable answers are left as they are."""
    for label, t in (thresholds or {}).items():
        score = result["scores"].get(label)
        if score is not None and result.get(label) is not None:
            result[label] = LABEL_VALUES[label]["yes" if score >= t else "no"]
    return result
