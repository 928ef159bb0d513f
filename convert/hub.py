"""Resolve SOURCE: a local checkpoint folder or a Hugging Face hub id (with a revision)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from wildguard_lite.errors import InvalidInputError, WildGuardLiteError, require

# Only what conversion reads: never pickle weights, never code.
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_source(source: str, revision: str | None = None) -> tuple[Path, dict]:
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
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = hf.snapshot_download(repo_id=source, revision=revision, allow_patterns=ALLOW_PATTERNS)
    except LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline else \
            "the hub is unreachable and it is not in the local Hugging Face cache"
        raise WildGuardLiteError(
            f"{source}@{revision or 'main'}: {how}; download it on a connected machine "
            "(huggingface-cli download) or pass a local folder"
        ) from None
    except HfHubHTTPError as exc:
        raise WildGuardLiteError(f"{source}@{revision or 'main'}: the hub refused the download ({exc})") from None
    except (OSError, ValueError) as exc:
        raise WildGuardLiteError(f"{source}@{revision or 'main'}: download failed ({exc})") from None
    folder = Path(folder)
    # snapshot folders are named by the resolved commit: record it, so the run is pinned.
    return folder, {"repo": source, "revision": revision or "main", "commit": folder.name}
