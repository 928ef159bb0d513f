"""`convert --push-to-hub REPO`: the model card, and the upload of artifacts + manifest + card.

The card is generated from manifest.json (and a `bench accuracy` report when given), so every
figure on it is one the conversion or the benchmark measured.
"""

from __future__ import annotations

import json
from pathlib import Path

from wildguard_lite.contract import LABEL_KEYS
from wildguard_lite.errors import InvalidInputError, ModelFileError, require
from wildguard_lite.hub import DEFAULT_PULL_QUANT, MANIFEST, hub_error
from wildguard_lite.convert.manifest import load_manifest

CARD = "README.md"
# WildGuard's licence (its model card): the converted weights keep it.
DEFAULT_LICENSE = "apache-2.0"
BASE_MODEL = "allenai/wildguard"


def _source_line(source: dict) -> str:
    if "repo" in source:
        return (
            f"[{source['repo']}](https://huggingface.co/{source['repo']}) at commit `{source.get('commit', '?')}`"
            f" (revision `{source.get('revision', 'main')}`)"
        )
    return f"a local checkpoint folder (`{Path(source.get('path', '?')).name}`)"


def _accuracy_rows(report: dict, artifacts: list[dict]) -> list[str]:
    by_file = {Path(str(a.get("model", ""))).name: a for a in report.get("artifacts", [])}
    rows = []
    for artifact in artifacts:
        entry = by_file.get(artifact["file"])
        if entry is None:
            continue
        agree = " | ".join(f"{entry['agreement'][k]:.4f}" for k in LABEL_KEYS)
        f1 = " | ".join("–" if entry["f1"][k]["all"] is None else f"{entry['f1'][k]['all']:.3f}" for k in LABEL_KEYS)
        rows.append(f"| {artifact['quant']} | {agree} | {f1} |")
    return rows


def render_card(manifest: dict, repo_id: str, accuracy: dict | None = None, license_id: str = DEFAULT_LICENSE) -> str:
    """The README.md (model card) of a published repo."""
    artifacts = [a for a in manifest.get("artifacts", []) if a.get("format", "gguf") == "gguf"]
    if not artifacts:
        raise InvalidInputError("the manifest lists no GGUF artifact to publish")
    source = manifest.get("source", {})
    base = source.get("repo", BASE_MODEL)
    quants = [a["quant"] for a in artifacts]
    pick = DEFAULT_PULL_QUANT if DEFAULT_PULL_QUANT in quants else quants[0]
    lines = [
        "---",
        f"license: {license_id}",
        f"base_model: {base}",
        "library_name: gguf",
        "tags: [wildguard, safety, moderation, gguf, wildguard-lite]",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        f"WildGuard (prompt harmfulness, response refusal, response harmfulness) converted to GGUF by "
        f"wildguard-lite {manifest.get('tools', {}).get('wildguard-lite', '?')} from {_source_line(source)}. "
        f"Template version `{manifest.get('template_version', '?')}`. Licence: {license_id}, as the source model; "
        "its terms of use apply.",
        "",
        "## Files",
        "",
        "| quant | file | size | sha256 |",
        "|---|---|---|---|",
    ]
    for a in artifacts:
        lines.append(
            f"| {a['quant']} | `{a['file']}` | {a['bytes'] / 2**30:.2f} GiB ({a['bytes']} bytes) | `{a['sha256']}` |"
        )
    lines += ["", "`manifest.json` lists the same digests; `wildguard-lite pull` checks them before use.", ""]
    v = manifest.get("verification") or {}
    lines += ["## Verification", ""]
    if v.get("status") in ("passed", "failed"):
        lines.append(
            f"Last-position logits of `{v.get('file', '?')}` against {v.get('reference', 'transformers')} on "
            f"{v.get('items', '?')} items: **{v['status']}**, max |Δlogit| {v.get('max_abs_logit_diff')} "
            f"(tolerance {v.get('tolerance')}), top-1 agreement {v.get('top1_agreement')}."
        )
    else:
        lines.append(f"Not verified at conversion ({v.get('reason', v.get('status', 'no record'))}).")
    lines.append("")
    if accuracy:
        rows = _accuracy_rows(accuracy, artifacts)
        if rows:
            lines += [
                "## Accuracy",
                "",
                f"`wildguard-lite bench accuracy` on {accuracy.get('dataset', '?')} ({accuracy.get('n', '?')} rows, "
                f"mode {accuracy.get('mode', '?')}): agreement with the reference and F1 against the gold labels.",
                "",
                "| quant | agree prompt | agree refusal | agree response | F1 prompt | F1 refusal | F1 response |",
                "|---|---|---|---|---|---|---|",
                *rows,
                "",
            ]
    lines += [
        "## Usage",
        "",
        "```bash",
        "pip install 'wildguard-lite[gguf,hub]'",
        f"wildguard-lite pull {repo_id} --quant {pick}",
        "```",
        "",
        "```python",
        "import wildguard_lite",
        f'clf = wildguard_lite.load("hf://{repo_id}", quant="{pick}")',
        'clf.classify([{"prompt": "How do I pick a lock?", "response": "I can\'t help with that."}])',
        "```",
        "",
        "The file is fetched through the Hugging Face cache (`HF_HUB_OFFLINE=1` works once cached) and its "
        "sha256 is checked against `manifest.json` before it is loaded.",
        "",
    ]
    return "\n".join(lines)


def upload_plan(out_dir: Path, manifest: dict) -> list[str]:
    """Files of `out_dir` that a push uploads (beside the generated card): GGUF artifacts + manifest."""
    files = [a["file"] for a in manifest.get("artifacts", []) if a.get("format", "gguf") == "gguf"]
    missing = [f for f in files if not (out_dir / f).is_file()]
    if missing:
        raise ModelFileError(f"{out_dir}: manifest lists files that are missing: {', '.join(missing)}")
    return [*files, MANIFEST]


def read_accuracy_report(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: not a readable 'bench accuracy' JSON report ({exc})") from None
    if not isinstance(report, dict) or "artifacts" not in report:
        raise InvalidInputError(f"{path}: not a 'bench accuracy' report (no 'artifacts'); pass the JSON it wrote")
    return report


def push_to_hub(
    out_dir: Path,
    repo_id: str,
    token: str | None = None,
    accuracy_report: Path | None = None,
    private: bool = False,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` if needed and upload the artifacts, manifest.json and the card in one commit;
    returns the commit URL."""
    hf = require("huggingface_hub", "hub")
    manifest = load_manifest(out_dir)
    if manifest is None:
        raise ModelFileError(f"{out_dir}: no manifest.json; convert first")
    card = render_card(manifest, repo_id, read_accuracy_report(accuracy_report))
    operations = [
        hf.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(out_dir / name))
        for name in upload_plan(out_dir, manifest)
    ]
    operations.append(hf.CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode("utf-8")))
    api = hf.HfApi(token=token, endpoint=endpoint)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        quants = ", ".join(a["quant"] for a in manifest["artifacts"])
        info = api.create_commit(repo_id, operations=operations, commit_message=f"wildguard-lite: {quants}")
    except Exception as exc:
        raise hub_error(exc, repo_id, None, "upload") from None
    return info.commit_url
