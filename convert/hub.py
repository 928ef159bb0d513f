"""Resolve SOURCE: a local checkpoint folder or a Hugging Face hub id (with a revision)."""

from __future__ import annotations

import re
from pathlib import Path

from wildguard_lite.errors import InvalidInputError, require

# Only what conversion reads: never code. Pickle weights only when a revision has no safetensors.
COMMON_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
ALLOW_PATTERNS = COMMON_PATTERNS + SAFETENSORS_PATTERNS
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_source(source: str, revision: str | None = None, token: str | None = None) -> tuple[Path, dict]:
    """Return (folder, source_info) where source_info goes into the manifest."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidInputError(f"{source}: is a file; pass the checkpoint folder (with config.json) or a hub id")
        if revision:
            raise InvalidInputError("--revision applies to hub ids only, not to a local folder")
        return path, {"path": str(path.resolve())}
    if not _REPO_ID.match(source):
        raise InvalidInputError(f"{source}: no such folder, and not a hub id like 'allenai/wildguard'")
    hf = require("huggingface_hub", "convert")
    from wildguard_lite.hub import hub_error

    try:
        folder = Path(
            hf.snapshot_download(repo_id=source, revision=revision, allow_patterns=ALLOW_PATTERNS, token=token)
        )
        if not any(folder.glob("*.safetensors")):
            # No safetensors at this commit: fetch the pickle shards (read with weights_only only),
            # pinned to the same commit.
            folder = Path(
                hf.snapshot_download(
                    repo_id=source, revision=folder.name, allow_patterns=COMMON_PATTERNS + PICKLE_PATTERNS, token=token
                )
            )
    except Exception as exc:  # huggingface_hub's typed errors, network errors
        raise hub_error(exc, source, revision) from None
    # snapshot folders are named by the resolved commit: record it, so the run is pinned.
    return folder, {"repo": source, "revision": revision or "main", "commit": folder.name}
