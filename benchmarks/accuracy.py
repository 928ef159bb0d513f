"""Accuracy: each artifact against the reference (agreement) and the gold labels (F1).

    wildguard-lite bench accuracy --reference ref.jsonl --model wildguard-q4_k_m.gguf \\
        --dataset wildguardtest.parquet --report acc.json --target-agreement 0.99
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS, LABEL_VALUES
from wildguard_lite.errors import InvalidInputError
from wildguard_lite.flags import add_runtime_flags

from .data import GOLD_COLUMNS, load_rows, to_item, write_json
from .reference import load_reference, run_reference

GOLD = dict(zip(LABEL_KEYS, GOLD_COLUMNS))  # label -> the dataset's gold column
POSITIVE = {key: LABEL_VALUES[key]["yes"] for key in LABEL_KEYS}  # "harmful", "refusal", "harmful"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference", required=True, help="reference JSONL from 'bench reference', or a model folder/hub id"
    )
    p.add_argument("--model", required=True, action="append", type=Path, help="artifact (.gguf or ONNX); repeatable")
    p.add_argument(
        "--dataset", required=True, help=".jsonl/.csv/.parquet in the WildGuardTest layout, or 'wildguardtest'"
    )
    p.add_argument("--report", required=True, type=Path, help="JSON report (a .md and PNG plots are written beside it)")
    p.add_argument("--target-agreement", type=float, help="name the smallest artifact meeting this agreement")
    p.add_argument("--limit", type=int, help="first N rows only")
    add_runtime_flags(p, "mode", "threads")


def run(args: argparse.Namespace) -> int:
    from wildguard_lite.loading import load

    from .speed import artifact_bytes

    rows = load_rows(args.dataset)[: args.limit]
    ref_path = Path(args.reference)
    if ref_path.is_file() and ref_path.suffix == ".jsonl":
        meta, ref = load_reference(ref_path, len(rows))
    else:
        ref = run_reference(args.reference, rows, None)
        meta = {"model": args.reference, "computed": "on the fly"}
    artifacts = []
    for model in args.model:
        if not model.exists():
            raise InvalidInputError(f"{model}: no such artifact")
        with load(model, mode=args.mode, threads=args.threads) as clf:
            t = time.perf_counter()
            ours = clf.classify([to_item(r) for r in rows])
            ms = (time.perf_counter() - t) * 1000 / len(rows)
        entry = {
            "model": str(model),
            "bytes": artifact_bytes(model),
            "ms_per_item": round(ms, 2),
            **compare(rows, ref, ours),
        }
        artifacts.append(entry)
        print(f"{model}: agreement " + ", ".join(f"{k} {v:.4f}" for k, v in entry["agreement"].items()))
    report = {
        "reference": meta,
        "dataset": str(args.dataset),
        "n": len(rows),
        "mode": args.mode,
        "artifacts": artifacts,
    }
    if args.target_agreement is not None:
        best = recommend(artifacts, args.target_agreement)
        report["target_agreement"] = args.target_agreement
        report["recommendation"] = None if best is None else {"model": best["model"], "bytes": best["bytes"]}
        print(
            f"target {args.target_agreement}: " + (f"smallest meeting it: {best['model']}" if best else "none meets it")
        )
    write_json(args.report, report)
    md = args.report.with_suffix(".md")
    md.write_text(markdown(report), encoding="utf-8")
    pngs = plots(report, args.report)
    print(f"wrote {args.report}, {md}" + "".join(f", {p}" for p in pngs))
    return 0


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


# Recall and precision levels whose thresholds the report lists (pick your operating point).
OPERATING_LEVELS = (0.8, 0.9, 0.95, 0.99)


def curve_points(scores: list[float | None], positive: list[bool]) -> list[tuple[float, float, float]]:
    """(threshold, precision, recall) for every distinct score, highest threshold first; a
    missing score (n/a, parse error) is never "yes", as in `f1`."""
    n_pos = sum(positive)
    scored = sorted(((s, y) for s, y in zip(scores, positive) if s is not None), key=lambda t: -t[0])
    points, tp, fp, i = [], 0, 0, 0
    while i < len(scored):
        t = scored[i][0]
        while i < len(scored) and scored[i][0] == t:  # ties move together
            tp += scored[i][1]
            fp += not scored[i][1]
            i += 1
        points.append((t, tp / (tp + fp), tp / n_pos if n_pos else 0.0))
    return points


def roc_auc(scores: list[float | None], positive: list[bool]) -> float | None:
    """P(a positive scores above a negative), ties half; missing scores rank lowest."""
    ranked = [(-1.0 if s is None else s, y) for s, y in zip(scores, positive)]
    pos = [s for s, y in ranked if y]
    neg = sorted(s for s, y in ranked if not y)
    if not pos or not neg:
        return None
    import bisect

    wins = sum(
        bisect.bisect_left(neg, s) + 0.5 * (bisect.bisect_right(neg, s) - bisect.bisect_left(neg, s)) for s in pos
    )
    return wins / (len(pos) * len(neg))


def operating_points(rows: list[dict], ours: list[dict], levels=OPERATING_LEVELS) -> dict[str, Any]:
    """Per label: ROC AUC, the precision/recall curve, and the threshold on P(yes) reaching
    each recall level (the highest such threshold) and each precision level (the lowest)."""
    out: dict[str, Any] = {}
    for key in LABEL_KEYS:
        pairs = [
            ((o.get("scores") or {}).get(key), row[GOLD[key]] == POSITIVE[key])
            for row, o in zip(rows, ours)
            if row[GOLD[key]] is not None
        ]
        if not pairs:
            out[key] = None
            continue
        scores, positive = [p[0] for p in pairs], [p[1] for p in pairs]
        points = curve_points(scores, positive)
        at_recall = {}
        for r in levels:
            hit = next((p for p in points if p[2] >= r), None)
            at_recall[str(r)] = (
                None
                if hit is None
                else {"threshold": hit[0], "precision": round(hit[1], 6), "recall": round(hit[2], 6)}
            )
        at_precision = {}
        for q in levels:
            ok = [p for p in points if p[1] >= q]
            hit = ok[-1] if ok else None  # the lowest threshold keeping the precision: most recall
            at_precision[str(q)] = (
                None
                if hit is None
                else {"threshold": hit[0], "precision": round(hit[1], 6), "recall": round(hit[2], 6)}
            )
        auc = roc_auc(scores, positive)
        out[key] = {
            "n": len(pairs),
            "positives": sum(positive),
            "unscored": sum(s is None for s in scores),
            "roc_auc": None if auc is None else round(auc, 6),
            "curve": [[round(t, 6), round(p, 6), round(r, 6)] for t, p, r in points],
            "threshold_at_recall": at_recall,
            "threshold_at_precision": at_precision,
        }
    return out


def compare(rows: list[dict], ref: list[dict], ours: list[dict]) -> dict[str, Any]:
    """Agreement with the reference, F1 against gold (all/adversarial/vanilla), ΔP(yes), flips."""
    out: dict[str, Any] = {"agreement": {}, "f1": {}, "delta_p_yes": {}, "flipped": []}
    for key in LABEL_KEYS:
        same = [r[key] == o[key] for r, o in zip(ref, ours)]
        out["agreement"][key] = round(sum(same) / len(same), 6)
        gold = [row[GOLD[key]] for row in rows]
        pred = [o[key] for o in ours]
        split = {}
        for name, keep in (
            ("all", lambda row: True),
            ("adversarial", lambda row: row["adversarial"]),
            ("vanilla", lambda row: not row["adversarial"]),
        ):
            idx = [i for i, row in enumerate(rows) if keep(row)]
            value = f1([pred[i] for i in idx], [gold[i] for i in idx], POSITIVE[key])
            split[name] = None if value is None else round(value, 6)
        out["f1"][key] = split
        deltas = [
            abs(o["scores"][key] - r["scores"][key])
            for r, o in zip(ref, ours)
            if (o.get("scores") or {}).get(key) is not None and (r.get("scores") or {}).get(key) is not None
        ]
        out["delta_p_yes"][key] = {
            "mean": round(sum(deltas) / len(deltas), 6) if deltas else None,
            "max": round(max(deltas), 6) if deltas else None,
            "n": len(deltas),
        }
        for i, ok in enumerate(same):
            if not ok:
                out["flipped"].append(
                    {
                        "index": i,
                        "task": key,
                        "reference": ref[i][key],
                        "ours": ours[i][key],
                        "p_yes_reference": (ref[i].get("scores") or {}).get(key),
                        "p_yes_ours": (ours[i].get("scores") or {}).get(key),
                    }
                )
    out["operating_points"] = operating_points(rows, ours)
    out["parse_error_rate"] = round(sum(bool(o.get("is_parsing_error")) for o in ours) / len(ours), 6)
    out["reference_f1"] = {
        key: round(f1([r[key] for r in ref], [row[GOLD[key]] for row in rows], POSITIVE[key]) or 0.0, 6)
        for key in LABEL_KEYS
    }
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
    lines = [
        f"# Accuracy against the reference ({model})",
        "",
        f"Dataset: {report['dataset']} ({report['n']} rows); mode: {report['mode']}.",
        "",
        "| artifact | MiB | agree prompt | agree refusal | agree response | F1 prompt (adv/van) | "
        "F1 refusal (adv/van) | F1 response (adv/van) | max ΔP(yes) | parse err | ms/item |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["artifacts"]:

        def fmt(k: str, f=a["f1"]) -> str:
            return " / ".join("–" if f[k][s] is None else f"{f[k][s]:.3f}" for s in ("adversarial", "vanilla"))

        dmax = max((v["max"] or 0.0) for v in a["delta_p_yes"].values())
        lines.append(
            f"| {a['model']} | {a['bytes'] / 2**20:.1f} | "
            + " | ".join(f"{a['agreement'][k]:.4f}" for k in LABEL_KEYS)
            + "".join(f" | {fmt(k)}" for k in LABEL_KEYS)
            + f" | {dmax:.4f} | {a['parse_error_rate']:.4f} | {a['ms_per_item']:.1f} |"
        )
    lines += [
        "",
        "Operating points (threshold on P(yes): `--threshold LABEL=P`):",
        "",
        "| artifact | label | ROC AUC | t @ recall 0.9 (P) | t @ recall 0.95 (P) | t @ precision 0.9 (R) | t @ precision 0.95 (R) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(hit, other: str) -> str:
        return "–" if hit is None else f"{hit['threshold']:.3f} ({hit[other]:.2f})"

    for a in report["artifacts"]:
        for key, op in (a.get("operating_points") or {}).items():
            if op is None:
                continue
            auc = "–" if op["roc_auc"] is None else f"{op['roc_auc']:.3f}"
            lines.append(
                f"| {Path(a['model']).name} | {key} | {auc} | "
                f"{cell(op['threshold_at_recall'].get('0.9'), 'precision')} | {cell(op['threshold_at_recall'].get('0.95'), 'precision')} | "
                f"{cell(op['threshold_at_precision'].get('0.9'), 'recall')} | {cell(op['threshold_at_precision'].get('0.95'), 'recall')} |"
            )
    rec = report.get("recommendation")
    if "target_agreement" in report:
        lines += [
            "",
            f"Target agreement {report['target_agreement']}: "
            + (f"smallest artifact meeting it: **{rec['model']}**." if rec else "no artifact meets it."),
        ]
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
    for a in arts:  # one precision/recall plot per artifact, a curve per label
        ops = a.get("operating_points") or {}
        if not any(ops.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, op in ops.items():
            if op and op["curve"]:
                auc = "" if op["roc_auc"] is None else f", ROC AUC {op['roc_auc']:.3f}"
                ax.plot(
                    [c[2] for c in op["curve"]],
                    [c[1] for c in op["curve"]],
                    marker=".",
                    markersize=3,
                    label=f"{key}{auc}",
                )
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{Path(a['model']).name}: threshold on P(yes) swept", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
        path = out_base.with_name(f"{out_base.stem}-pr-{Path(a['model']).stem}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
