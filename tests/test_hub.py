"""Publish and pull: huggingface_hub's real download and cache code against a local server that
answers the hub's resolve API (tests/hub_server.py); offline runs in a subprocess with
HF_HUB_OFFLINE=1, as a user would set it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("llama_cpp")

from hub_server import FakeRepo, HubServer  # noqa: E402

from wildguard_lite.benchmarks.data import to_item  # noqa: E402
from wildguard_lite.errors import InvalidInputError, ModelFileError, WildGuardLiteError  # noqa: E402
from wildguard_lite.hub import pull  # noqa: E402
from wildguard_lite.utils import sha256_file  # noqa: E402
from wildguard_lite.convert.model_card import push_to_hub, render_card, upload_plan  # noqa: E402

REPO = "acme/wildguard-toy-gguf"
COMMIT = "c0ffee" * 6 + "c0ff"


@pytest.fixture(scope="module")
def published(toy_gguf) -> FakeRepo:
    """The toy's converted folder as a published repo: artifacts, manifest.json and the card."""
    folder: Path = toy_gguf["dir"]
    card = folder / "README.md"
    card.write_text(render_card(toy_gguf["manifest"], REPO), encoding="utf-8")
    names = upload_plan(folder, toy_gguf["manifest"]) + ["README.md"]
    return FakeRepo(COMMIT, {name: folder / name for name in names})


def _offline(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_pull_fetches_only_the_asked_artifact_into_the_hf_cache(published, toy_gguf, tmp_path):
    cache = tmp_path / "hf"
    with HubServer({REPO: published}) as hub:
        path = pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=cache)
    artifact = next(a for a in toy_gguf["manifest"]["artifacts"] if a["quant"] == "q4_k_m")
    repo_dir = cache / ("models--" + REPO.replace("/", "--"))
    assert path == repo_dir / "snapshots" / COMMIT / artifact["file"]
    assert path.is_symlink() and path.resolve().parent == repo_dir / "blobs"  # huggingface_hub's own layout
    assert (repo_dir / "refs" / "main").read_text() == COMMIT
    assert sha256_file(path) == artifact["sha256"]
    fetched = {r.split("/")[-1] for r in hub.requests if r.startswith("GET")}
    assert fetched == {"manifest.json", artifact["file"]}  # not the other quants


def test_offline_pull_and_load_hf_uri_use_the_cache_alone(published, toy_gguf, heldout, tmp_path):
    cache = tmp_path / "hf"
    with HubServer({REPO: published}) as hub:
        pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=cache)
    # The server is gone; HF_HUB_OFFLINE=1 and an unreachable endpoint: the cache alone answers.
    cli = [sys.executable, "-c", "import sys; from wildguard_lite.cli import main; sys.exit(main(sys.argv[1:]))"]
    done = _offline([*cli, "pull", REPO, "--quant", "q4_k_m"], cache)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == toy_gguf["q4_k_m"].name
    # A quant never downloaded: a clear error, exit 2.
    missing = _offline([*cli, "pull", REPO, "--quant", "q8_0"], cache)
    assert missing.returncode == 2 and "not in the local Hugging Face cache" in missing.stderr
    items = [to_item(row) for row in heldout[:8]]
    script = (
        "import json, sys, wildguard_lite\n"
        f"clf = wildguard_lite.load('hf://{REPO}', quant='q4_k_m', threads=1, n_ctx=1024)\n"
        "print(json.dumps(clf.classify(json.loads(sys.stdin.read()))))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    run = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(items), env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    from wildguard_lite import load

    with load(toy_gguf["q4_k_m"], threads=1, n_ctx=1024) as clf:
        assert json.loads(run.stdout) == clf.classify(items)


def _corrupt_cached_blob(path: Path) -> None:
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))


def _wrong_manifest(published: FakeRepo, tmp_path: Path) -> FakeRepo:
    manifest = json.loads(published.files["manifest.json"].read_text())
    for a in manifest["artifacts"]:
        a["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return FakeRepo(COMMIT, {**published.files, "manifest.json": tmp_path / "manifest.json"})


@pytest.mark.parametrize(
    "case",
    [
        "cached file altered",  # the blob in the HF cache changed after download
        "manifest disagrees",  # the served file is not the one the manifest names
    ],
)
def test_digest_mismatch_is_refused(published, tmp_path, case):
    cache = tmp_path / "hf"
    repo = published if case == "cached file altered" else _wrong_manifest(published, tmp_path)
    with HubServer({REPO: repo}) as hub:
        if case == "cached file altered":
            _corrupt_cached_blob(pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=cache))
        with pytest.raises(ModelFileError, match="sha256 .* but the manifest says .* it was not used"):
            pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=cache)


@pytest.mark.parametrize(
    "error, expected",
    [
        # a gated repo, conditions not accepted: where to accept them, then how to authenticate
        (
            (403, "GatedRepo", "Access restricted"),
            [r"is gated", r"Accept its conditions on https?://\S+/" + REPO, "hf auth login", "HF_TOKEN", "--token"],
        ),
        # private (or missing) repo without a token: the hub answers 401 RepoNotFound
        ((401, "RepoNotFound", ""), ["not found, or private", "hf auth login", "HF_TOKEN"]),
        # a token the hub rejects (HfHubHTTPError 401)
        ((401, "", "Invalid credentials in Authorization header"), ["not accepted \\(HTTP 401\\)", "hf auth login"]),
        # a valid token without access (HfHubHTTPError 403)
        ((403, "", ""), ["lacks access \\(HTTP 403\\)", "accept the conditions", "HF_TOKEN"]),
    ],
)
def test_hub_refusals_say_what_to_do(tmp_path, error, expected):
    with HubServer({REPO: FakeRepo(COMMIT, {}, error=error)}) as hub:
        with pytest.raises(WildGuardLiteError) as err:
            pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=tmp_path / "hf")
    import re

    for pattern in expected:
        assert re.search(pattern, str(err.value)), (pattern, str(err.value))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"quant": "q5_k_m"}, InvalidInputError, "no GGUF artifact with quant 'q5_k_m'; available: f16, q4_k_m, q8_0"),
        ({"revision": "v9"}, WildGuardLiteError, "no such revision"),
    ],
)
def test_pull_bad_requests(published, tmp_path, kwargs, error, message):
    with HubServer({REPO: published}) as hub:
        with pytest.raises(error, match=message):
            pull(REPO, **{"quant": "q4_k_m", **kwargs}, endpoint=hub.url, cache_dir=tmp_path / "hf")


def _manifest_repo(tmp_path: Path, manifest) -> FakeRepo:
    path = tmp_path / "manifest.json"
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return FakeRepo(COMMIT, {"manifest.json": path})


def _artifact(**fields) -> dict:
    return {"artifacts": [{"quant": "q4_k_m", "file": "toy-q4_k_m.gguf", "sha256": "0" * 64, **fields}]}


MANIFEST_ROWS = [
    # nested 100,000 deep: was a RecursionError traceback from pull and load("hf://...")
    ("[" * 100_000 + "]" * 100_000, ModelFileError, r"manifest.json nests arrays/objects too deeply"),
    # an artifact named ".": was IsADirectoryError on the cache's snapshot folder
    (_artifact(file="."), ModelFileError, r"entry for 'q4_k_m' lacks a valid file name .*got '\.'"),
    # ... "..", which names the folder above
    (_artifact(file=".."), ModelFileError, r"lacks a valid file name .*got '\.\.'"),
    # ... a file that is not a GGUF
    (_artifact(file="README.md"), ModelFileError, r"lacks a valid file name \(a \.gguf file"),
    # an artifact without a quant name: was "available: None"
    (
        {"artifacts": [{"file": "x.gguf", "sha256": "0" * 64}]},
        InvalidInputError,
        r"no GGUF artifact with quant 'q4_k_m'; available: none$",
    ),
]


@pytest.mark.parametrize(
    "manifest, error, message", MANIFEST_ROWS, ids=[f"manifest-{i}" for i in range(len(MANIFEST_ROWS))]
)
def test_bad_manifests_are_clear_errors(tmp_path, manifest, error, message):
    with HubServer({REPO: _manifest_repo(tmp_path, manifest)}) as hub:
        with pytest.raises(error, match=message):
            pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=tmp_path / "hf")
        # load("hf://...") pulls the same way: one line, exit status 2, no traceback.
        script = (
            "import sys\nfrom wildguard_lite.cli import run\nfrom wildguard_lite import load\n"
            f"sys.exit(run(lambda: load('hf://{REPO}', quant='q4_k_m')))\n"
        )
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf2")}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert __import__("re").search(message, proc.stderr.strip().splitlines()[-1]), proc.stderr[-2000:]


def test_hub_server_error_is_reported_as_one(tmp_path, monkeypatch):
    # HTTP 500 (after huggingface_hub's retries): was "not in the local Hugging Face cache, and the
    # hub could not be reached". The retries' waits (~24 s) are cut: what they end in is tested.
    import huggingface_hub.file_download as download

    backoff = download.http_backoff
    monkeypatch.setattr(download, "http_backoff", lambda *a, **kw: backoff(*a, **{**kw, "max_retries": 0}))
    with HubServer({REPO: FakeRepo(COMMIT, {}, error=(500, "", ""))}) as hub:
        with pytest.raises(WildGuardLiteError, match=r"the hub answered with a server error \(HTTP 500\)") as err:
            pull(REPO, "q4_k_m", endpoint=hub.url, cache_dir=tmp_path / "hf")
    assert "could not be reached" not in str(err.value)


def test_token_is_sent(published, tmp_path):
    with HubServer({REPO: published}) as hub:
        pull(REPO, "q4_k_m", token="hf_exampletoken", endpoint=hub.url, cache_dir=tmp_path / "hf")
    assert hub.auth and all(a == "Bearer hf_exampletoken" for a in hub.auth)


# -- convert's source download: safetensors preferred, pickle only when there is none -------------


def _resolve_in_subprocess(hub: HubServer, cache: Path, repo: str) -> subprocess.CompletedProcess:
    script = (
        "import sys\nfrom wildguard_lite.cli import run\nfrom wildguard_lite.convert.hub import resolve_source\n"
        f"sys.exit(run(lambda: print(resolve_source({repo!r}, token='hf_x')[0])))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache)}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)


def test_source_download_prefers_safetensors_and_falls_back_to_pickle(toy_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from wildguard_lite.convert.safetensors_io import list_tensors

    bin_file = tmp_path / "pytorch_model.bin"
    torch.save({r.name: torch.from_numpy(r.load_f32().copy()) for r in list_tensors(toy_dir)}, bin_file)
    common = {f: toy_dir / f for f in ("config.json", "tokenizer.model", "tokenizer_config.json")}
    repos = {
        "acme/both": FakeRepo(
            COMMIT, {**common, "model.safetensors": toy_dir / "model.safetensors", "pytorch_model.bin": bin_file}
        ),
        "acme/pickle-only": FakeRepo(COMMIT, {**common, "pytorch_model.bin": bin_file}),
        "acme/gated": FakeRepo(COMMIT, {}, error=(403, "GatedRepo", "")),
    }
    with HubServer(repos) as hub:
        both = _resolve_in_subprocess(hub, tmp_path / "hf", "acme/both")
        got_both = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
        del hub.requests[:]
        only = _resolve_in_subprocess(hub, tmp_path / "hf", "acme/pickle-only")
        got_only = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
        gated = _resolve_in_subprocess(hub, tmp_path / "hf", "acme/gated")
    assert both.returncode == 0, both.stderr
    assert any("model.safetensors" in r for r in got_both) and not any(".bin" in r for r in got_both)
    assert only.returncode == 0, only.stderr
    assert any("pytorch_model.bin" in r for r in got_only)
    assert (Path(only.stdout.strip()) / "pytorch_model.bin").is_file()
    assert gated.returncode == 2 and "is gated" in gated.stderr and "hf auth login" in gated.stderr
    assert all(a == "Bearer hf_x" for a in hub.auth)  # --token reaches every request


# -- the model card --------------------------------------------------------------------------------


def test_model_card_content(toy_gguf):
    manifest = toy_gguf["manifest"]
    files = {a["quant"]: a for a in manifest["artifacts"]}
    report = {
        "dataset": "heldout.jsonl",
        "n": 120,
        "mode": "score",
        "artifacts": [
            {
                "model": f"/x/{files['q4_k_m']['file']}",
                "bytes": 1,
                "agreement": {"prompt_harmfulness": 0.9917, "response_refusal": 1.0, "response_harmfulness": 0.975},
                "f1": {
                    k: {"all": 0.912, "adversarial": None, "vanilla": 0.9}
                    for k in ("prompt_harmfulness", "response_refusal", "response_harmfulness")
                },
            },
        ],
    }
    card = render_card(manifest, REPO, report)
    source = manifest["source"]
    expected = [
        "license: apache-2.0",
        f"`{source['path'].split('/')[-1]}`" if "path" in source else source["commit"],
        *(a["sha256"] for a in manifest["artifacts"]),
        *(f"`{a['file']}`" for a in manifest["artifacts"]),
        *(f"({a['bytes']} bytes)" for a in manifest["artifacts"]),
        f"max |Δlogit| {manifest['verification']['max_abs_logit_diff']}",
        f"top-1 agreement {manifest['verification']['top1_agreement']}",
        "| q4_k_m | 0.9917 | 1.0000 | 0.9750 | 0.912 | 0.912 | 0.912 |",
        f"wildguard-lite pull {REPO} --quant q4_k_m",
        f'wildguard_lite.load("hf://{REPO}", quant="q4_k_m")',
    ]
    for text in expected:
        assert text in card, text
    assert "## Accuracy" not in render_card(manifest, REPO)  # no report: no accuracy section
    hub_source = {**manifest, "source": {"repo": "allenai/wildguard", "revision": "main", "commit": "ab" * 20}}
    assert "allenai/wildguard" in render_card(hub_source, REPO) and "ab" * 20 in render_card(hub_source, REPO)


def test_upload_plan_is_artifacts_and_manifest(toy_gguf, tmp_path):
    plan = upload_plan(toy_gguf["dir"], toy_gguf["manifest"])
    assert sorted(plan) == sorted([a["file"] for a in toy_gguf["manifest"]["artifacts"]] + ["manifest.json"])
    with pytest.raises(ModelFileError, match="missing"):
        upload_plan(tmp_path, toy_gguf["manifest"])


def test_push_without_write_access_says_so(toy_gguf):
    # The upload itself is not served by the local server; this checks the call reaches the hub
    # with the token and that a refusal is explained.
    with HubServer({}) as hub:
        with pytest.raises(WildGuardLiteError, match=r"refused the upload \(HTTP 403\).*write access"):
            push_to_hub(toy_gguf["dir"], REPO, token="hf_writer", endpoint=hub.url)
    assert any(r.startswith("POST /api/repos/create") for r in hub.requests)
    assert hub.auth == ["Bearer hf_writer"] * len(hub.auth)
