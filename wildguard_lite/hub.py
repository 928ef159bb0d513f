"""Pull pre-converted files from a Hugging Face hub repo, verified before use.

A repo published by `wildguard-lite convert --push-to-hub` holds the artifacts, `manifest.json`
(each artifact's quant, size and sha256) and a model card. `pull(repo, quant)` reads the manifest,
downloads only the artifact asked for through the Hugging Face cache (the revision pinned to the
manifest's commit; `HF_HUB_OFFLINE=1` uses the cache alone) and checks its sha256 before returning
it. `load("hf://REPO[@REVISION]", quant=...)` does the same.

Hub errors become one message that says what to do (`hub_error`); convert/hub.py uses it too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import InvalidInputError, ModelFileError, WildGuardLiteError, require
from .utils import sha256_file

HF_SCHEME = "hf://"
MANIFEST = "manifest.json"
DEFAULT_PULL_QUANT = "q4_k_m"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
LOGIN_HINT = "run `hf auth login` (or set HF_TOKEN, or pass --token / token=)"


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """ "hf://owner/name[@revision]" -> (repo id, revision or None)."""
    rest = uri[len(HF_SCHEME) :] if uri.startswith(HF_SCHEME) else uri
    repo, _, revision = rest.partition("@")
    if not REPO_ID.match(repo):
        raise InvalidInputError(f"{uri}: not a hub repo id; expected hf://owner/name or hf://owner/name@revision")
    return repo, revision or None


def model_page(repo: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo}"


def hub_error(exc: Exception, repo: str, revision: str | None, what: str = "") -> WildGuardLiteError:
    """The user-facing error for a huggingface_hub exception: what happened and what to do."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from huggingface_hub import constants

    where = f"{repo}@{revision or 'main'}" + (f" ({what})" if what else "")
    cause = exc.__cause__
    if (
        isinstance(exc, LocalEntryNotFoundError)
        and isinstance(cause, Exception)
        and getattr(getattr(cause, "response", None), "status_code", None)
    ):
        exc = cause  # the hub answered (hf_hub_download wraps its answer when nothing is cached)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and status >= 500:
        return WildGuardLiteError(
            f"{where}: the hub answered with a server error (HTTP {status}), after retrying; "
            "try again later (the file is not in the local cache either)"
        )
    if isinstance(exc, GatedRepoError):
        return WildGuardLiteError(
            f"{where}: the repository is gated. Accept its conditions on {model_page(repo)} (logged in with your "
            f"account), then {LOGIN_HINT} with a token of that account"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else f"the hub could not be reached: {type(exc.__cause__).__name__ if exc.__cause__ else 'no network'}"
        )
        return WildGuardLiteError(
            f"{where}: not in the local Hugging Face cache, and {why}; download it once on a connected machine "
            "(wildguard-lite pull / hf download), or unset HF_HUB_OFFLINE"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return WildGuardLiteError(
            f"{where}: repository not found, or private and this request is not authorised (HTTP {status or '401'}). "
            f"Check the name; if it is private or gated, {LOGIN_HINT} with an account that can see {model_page(repo)}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return WildGuardLiteError(f"{where}: no such revision; pass an existing branch, tag or commit")
    if isinstance(exc, EntryNotFoundError):
        return WildGuardLiteError(f"{where}: file not found in the repository")
    if isinstance(exc, HfHubHTTPError) and status in (401, 403) and what == "upload":
        return WildGuardLiteError(
            f"{where}: the hub refused the upload (HTTP {status}); {LOGIN_HINT} with a "
            f"token that has write access to {repo}"
        )
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        reason = (
            "the token was not accepted (HTTP 401): it is missing, invalid or expired"
            if status == 401
            else "the token lacks access (HTTP 403): accept the conditions on the model page, or use a token with "
            "read access to this repository"
        )
        return WildGuardLiteError(f"{where}: {reason}. See {model_page(repo)}, then {LOGIN_HINT}")
    if isinstance(exc, HfHubHTTPError):
        return WildGuardLiteError(f"{where}: the hub answered with an error ({exc}); try again later")
    return WildGuardLiteError(f"{where}: download failed ({type(exc).__name__}: {exc})")


def choose_artifact(manifest: dict, quant: str, where: str) -> dict:
    """The manifest's GGUF artifact for `quant`, or an error naming those available."""
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, list):
        raise ModelFileError(f"{where}: {MANIFEST} has no artifact list; is this a repo published by wildguard-lite?")
    found = [a for a in artifacts if isinstance(a, dict) and a.get("quant") == quant.lower()]
    gguf = [a for a in found if a.get("format", "gguf") == "gguf"]
    if not gguf:
        # Entries without a quant name (a malformed manifest) are not offered as choices.
        have = sorted(
            {
                a["quant"]
                for a in artifacts
                if isinstance(a, dict) and isinstance(a.get("quant"), str) and a.get("format", "gguf") == "gguf"
            }
        )
        extra = " (only as ONNX, which pull does not fetch)" if found else ""
        raise InvalidInputError(
            f"{where}: no GGUF artifact with quant '{quant}'{extra}; available: {', '.join(have) or 'none'}"
        )
    artifact = gguf[0]
    if not re.fullmatch(r"[0-9a-f]{64}", str(artifact.get("sha256", ""))) or not plain_gguf_name(artifact.get("file")):
        raise ModelFileError(
            f"{where}: {MANIFEST} entry for '{quant}' lacks a valid file name (a .gguf file at "
            f"the repo's top level, got {str(artifact.get('file'))[:80]!r}) or sha256"
        )
    return artifact


def plain_gguf_name(name) -> bool:
    """A file at the repo's top level: no folder, not '.', '..' or hidden, ending in .gguf."""
    return (
        isinstance(name, str)
        and name.endswith(".gguf")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )


def pull(
    repo: str,
    quant: str = DEFAULT_PULL_QUANT,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    force_download: bool = False,
) -> Path:
    """Download (or find in the HF cache) one artifact of a published repo; returns its verified path.

    Args:
        repo: "owner/name" (or "hf://owner/name[@revision]").
        quant: the artifact's quant as in the manifest, e.g. "q4_k_m".
        revision: branch, tag or commit; the artifact is fetched at the commit the manifest came from.
        token: a hub token (default: HF_TOKEN or the one saved by `hf auth login`).
        cache_dir: the Hugging Face cache (default: HF_HUB_CACHE / ~/.cache/huggingface/hub).
        endpoint: a hub mirror (default: HF_ENDPOINT or huggingface.co).
        force_download: download again even if cached (e.g. after a digest mismatch).

    Raises:
        WildGuardLiteError: the hub refused (with what to do), offline and not cached, no such quant, or the
            file's sha256 differs from the manifest's (the file is never used then).
    """
    hf = require("huggingface_hub", "hub")
    if repo.startswith(HF_SCHEME) or "@" in repo:
        repo, uri_revision = parse_hf_uri(repo)
        revision = revision or uri_revision
    elif not REPO_ID.match(repo):
        raise InvalidInputError(f"{repo}: not a hub repo id like 'owner/name'")
    common = {"repo_id": repo, "token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    try:
        manifest_path = Path(
            hf.hf_hub_download(filename=MANIFEST, revision=revision, force_download=force_download, **common)
        )
    except Exception as exc:  # huggingface_hub's typed errors, requests' network errors
        raise hub_error(exc, repo, revision, MANIFEST) from None
    # The cache keeps snapshots/<commit>/FILE: the artifact is fetched at that same commit, so a
    # branch moving between the two downloads cannot mix files of two revisions.
    commit = manifest_path.parent.name
    where = f"{repo}@{commit[:12]}"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelFileError(
            f"{where}: {MANIFEST} nests arrays/objects too deeply to be a wildguard-lite manifest"
        ) from None
    artifact = choose_artifact(manifest, quant, where)
    try:
        path = Path(
            hf.hf_hub_download(filename=artifact["file"], revision=commit, force_download=force_download, **common)
        )
    except Exception as exc:
        raise hub_error(exc, repo, commit, artifact["file"]) from None
    actual = sha256_file(path)
    if actual != artifact["sha256"]:
        raise ModelFileError(
            f"{where}: {artifact['file']} in the cache ({path}) has sha256 {actual}, but the manifest says "
            f"{artifact['sha256']}; it was not used. Download it again: wildguard-lite pull {repo} --quant {quant} "
            "--force-download"
        )
    return path
