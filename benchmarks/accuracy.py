"""Accuracy: each artifact against the reference (agreement) and the gold labels (F1)."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.benchmarks.data import to_item

GOLD = {"prompt_harmfulness": "prompt_harm_label", "response_refusal": "response_refusal_label",
        "response_harmfulness": "response_harm_label"}
POSITIVE = {"prompt_harmfulness": "harmful", "response_refusal": "refusal", "response_harmfulness": "harmful"}


# -- the reference --------------------------------------------------------------------------------

def run_reference(model: str, rows: list[dict], out: Path | None, revision: str | None = None,
                  progress: Callable[[int], None] | None = None) -> list[dict]:
    """The official procedure (transformers, slow tokenizer, greedy, official parser) on rows."""
    from wildguard_lite.convert.hub import resolve_source
    from wildguard_lite.convert.reference import TransformersReference

    folder, source = resolve_source(model, revision)
    ref = TransformersReference(folder)
    results = []
    for i, row in enumerate(rows):
        results.append({"index": i, **ref.classify([to_item(row)])[0]})
        if progress:
            progress(i + 1)
    if out is not None:
        meta = {"model": source, "device": ref.device, "dtype": str(ref.dtype).replace("torch.", ""),
                "versions": _versions(), "n": len(rows), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        from wildguard_lite.convert.manifest import atomic_write_text

        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [{"meta": meta}, *results]))
    return results


def load_reference(path: Path, n_rows: int) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or "meta" not in lines[0]:
        raise InvalidInputError(f"{path}: not a reference file from 'wildguard-lite bench reference'")
    rows = lines[1:]
    if len(rows) != n_rows:
        raise InvalidInputError(f"{path}: has {len(rows)} results but the dataset has {n_rows} rows; "
                                "run the reference on the same dataset")
    return lines[0]["meta"], rows


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("wildguard-lite", "torch", "transformers", "llama-cpp-python", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- metrics --------------------------------------------------------------------------------------

def f1(pred: list[Any], gold: list[Any], positive: str) -> float | None:
    """F1 of the positive class; a missing prediction (n/a, parse error) counts as negative."""
    pairs = [(p, g) for p, g in zip(pred, gold) if g is not None]
    if not pairs:
        return None
    tp = sum(p == positive and g == positive for p, g in pairs)
    fp = sum(p == positive and g != positive for p, g in pairs)
    fn = sum(p != positive and g == positive for p, g in pairs)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def compare(rows: list[dict], ref: list[dict], ours: list[dict]) -> dict[str, Any]:
    """Agreement with the reference, F1 against gold (all/adversarial/vanilla), ΔP(yes), flips."""
    out: dict[str, Any] = {"agreement": {}, "f1": {}, "delta_p_yes": {}, "flipped": []}
    for key in LABEL_KEYS:
        same = [r[key] == o[key] for r, o in zip(ref, ours)]
        out["agreement"][key] = round(sum(same) / len(same), 6)
        gold = [row[GOLD[key]] for row in rows]
        pred = [o[key] for o in ours]
        split = {}
        for name, keep in (("all", lambda row: True), ("adversarial", lambda row: row["adversarial"]),
                           ("vanilla", lambda row: not row["adversarial"])):
            idx = [i for i, row in enumerate(rows) if keep(row)]
            value = f1([pred[i] for i in idx], [gold[i] for i in idx], POSITIVE[key])
            split[name] = None if value is None else round(value, 6)
        out["f1"][key] = split
        deltas = [abs(o["scores"][key] - r["scores"][key]) for r, o in zip(ref, ours)
                  if (o.get("scores") or {}).get(key) is not None and (r.get("scores") or {}).get(key) is not None]
        out["delta_p_yes"][key] = {"mean": round(sum(deltas) / len(deltas), 6) if deltas else None,
                                   "max": round(max(deltas), 6) if deltas else None, "n": len(deltas)}
        for i, ok in enumerate(same):
            if not ok:
                out["flipped"].append({"index": i, "task": key, "reference": ref[i][key], "ours": ours[i][key],
                                       "p_yes_reference": (ref[i].get("scores") or {}).get(key),
                                       "p_yes_ours": (ours[i].get("scores") or {}).get(key)})
    out["parse_error_rate"] = round(sum(bool(o.get("is_parsing_error")) for o in ours) / len(ours), 6)
    out["reference_f1"] = {key: round(f1([r[key] for r in ref], [row[GOLD[key]] for row in rows], POSITIVE[key]) or 0.0, 6)
                           for key in LABEL_KEYS}
    return out


def recommend(artifacts: list[dict], target: float) -> dict | None:
    """The smallest artifact whose agreement meets `target` on every task."""
    ok = [a for a in artifacts if min(a["agreement"].values()) >= target]
    return min(ok, key=lambda a: a["bytes"]) if ok else None


# -- reports --------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    model = report["reference"].get("model")
    if isinstance(model, dict):
        model = model.get("repo") or model.get("path")
    lines = [f"# Accuracy against the reference ({model})", "",
             f"Dataset: {report['dataset']} ({report['n']} rows); mode: {report['mode']}.", "",
             "| artifact | MiB | agree prompt | agree refusal | agree response | F1 prompt (adv/van) | "
             "F1 refusal (adv/van) | F1 response (adv/van) | max ΔP(yes) | parse err | ms/item |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        f = a["f1"]
        fmt = lambda k: " / ".join("–" if f[k][s] is None else f"{f[k][s]:.3f}" for s in ("adversarial", "vanilla"))
        dmax = max((v["max"] or 0.0) for v in a["delta_p_yes"].values())
        lines.append(f"| {a['model']} | {a['bytes'] / 2**20:.1f} | "
                     + " | ".join(f"{a['agreement'][k]:.4f}" for k in LABEL_KEYS)
                     + f" | {fmt('prompt_harmfulness')} | {fmt('response_refusal')} | {fmt('response_harmfulness')}"
                     f" | {dmax:.4f} | {a['parse_error_rate']:.4f} | {a['ms_per_item']:.1f} |")
    rec = report.get("recommendation")
    if "target_agreement" in report:
        lines += ["", f"Target agreement {report['target_agreement']}: "
                  + (f"smallest artifact meeting it: **{rec['model']}**." if rec else "no artifact meets it.")]
    return "\n".join(lines) + "\n"


def plots(report: dict, out_base: Path) -> list[Path]:
    """agreement vs file size and latency vs file size, as PNG; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    arts = report["artifacts"]
    sizes = [a["bytes"] / 2**20 for a in arts]
    for name, values, ylabel in (
        ("agreement", [min(a["agreement"].values()) for a in arts], "lowest agreement with the reference (3 tasks)"),
        ("latency", [a["ms_per_item"] for a in arts], "ms per item (this machine)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(sizes, values)
        for a, x, y in zip(arts, sizes, values):
            ax.annotate(Path(a["model"]).name, (x, y), fontsize=7)
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        path = out_base.with_name(f"{out_base.stem}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
