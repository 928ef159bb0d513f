"""manifest.json: what was converted, from what, with which tools, and how it verified."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from wildguard_lite.contract import TEMPLATE_VERSION
from wildguard_lite.errors import WildGuardLiteError
from wildguard_lite.convert.tempfiles import forget, make_temp_file

MANIFEST = "manifest.json"


def tool_versions() -> dict[str, str]:
    out = {}
    for dist in ("wildguard-lite", "gguf", "llama-cpp-python", "sentencepiece", "transformers", "torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename: never a half-written file. The
    file gets the umask's usual mode (0644 under umask 022), like any file the user writes."""
    tmp = make_temp_file(path.parent, path.name, ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        forget(tmp)


def load_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WildGuardLiteError(f"{path}: existing manifest is not valid JSON ({exc}); remove it") from None


def update_manifest(out_dir: Path, source: dict, artifacts: list[dict], extra: dict) -> dict:
    """Merge new artifacts into the folder's manifest (same file name: replaced)."""
    old = load_manifest(out_dir) or {}
    keep = [
        a
        for a in old.get("artifacts", [])
        if old.get("source") == source
        and a["file"] not in {b["file"] for b in artifacts}
        and (out_dir / a["file"]).is_file()
    ]
    manifest = {
        "manifest_version": 1,
        "template_version": TEMPLATE_VERSION,
        "source": source,
        "tools": tool_versions(),
        "artifacts": keep + artifacts,
        **extra,
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest
