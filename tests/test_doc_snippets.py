"""Every ```python snippet of README.md and docs/*.md runs as written.

- Fast tier: each one compiles and uses no name it does not define or import (ruff's F821).
- Slow tier: each one runs in a fresh Python in an empty folder where every `.gguf` path it
  names is the toy's Q4_K_M file and the batch inputs it names hold a few of the toy's held-out
  rows; its exit status must be 0.
- A snippet that needs what no test here has (real weights from another converter, a hub, a
  Ray cluster, a server on a fixed port) carries `<!-- snippet-skip: REASON -->` on the line
  before its fence; `# example: NAME` blocks run in tests/test_embedding_docs.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wildguard_lite.utils import python_command

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- snippet-skip: (?P<skip>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)
EXAMPLE = re.compile(r"^# example: (\w+)\n")


def snippets() -> list[tuple[str, str, str | None]]:
    """(id, code, reason to skip or None) for every python snippet."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            out.append((f"{path.relative_to(ROOT)}:{line}", match["code"], match["skip"]))
    return out


SNIPPETS = snippets()
IDS = [name for name, _, _ in SNIPPETS]


def test_the_docs_have_snippets():
    assert len(SNIPPETS) >= 10 and any(name.startswith("README.md") for name in IDS)


@pytest.mark.parametrize("name, code, skip", SNIPPETS, ids=IDS)
def test_snippet_is_complete(name, code, skip, tmp_path):
    compile(code, name, "exec")  # top-level await, a fragment: a SyntaxError here
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (the [dev] extra): undefined names not checked")
    file = tmp_path / "snippet.py"
    file.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [ruff, "check", "--isolated", "--select", "F821,F822,F823", "--output-format", "concise", str(file)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"{name} uses names it never defines:\n{done.stdout}"


@pytest.fixture(scope="module")
def workspace(toy_gguf, heldout, tmp_path_factory):
    """Inputs the snippets name: a few held-out rows as JSONL and Parquet."""
    folder = tmp_path_factory.mktemp("snippet-inputs")
    rows = [{"prompt": r["prompt"], **({"response": r["response"]} if r.get("response") else {})} for r in heldout[:6]]
    (folder / "exchanges.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("pyarrow.parquet").write_table(pa.Table.from_pylist(rows), folder / "exchanges.parquet")
    return folder, Path(toy_gguf["q4_k_m"])


@pytest.mark.parametrize("name, code, skip", SNIPPETS, ids=IDS)
def test_snippet_runs_as_written(name, code, skip, workspace, tmp_path):
    if skip:
        pytest.skip(f"{name}: {skip}")
    if EXAMPLE.match(code):
        pytest.skip(f"{name}: runs in tests/test_embedding_docs.py")
    inputs, gguf = workspace
    for item in inputs.iterdir():
        shutil.copy(item, tmp_path / item.name)
    for path in set(re.findall(r"""["']([^"']+\.gguf)["']""", code)):
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(gguf)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        python_command("-c", code), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"


# Where the docs name a file the code writes, the name is the code's (toy-v4 and toy-q8_0.gguf
# outlived the code that wrote them). docs/measurements.md is left out: its rows record what was
# measured then, under the names of the time.
NAMED = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
NAMED += sorted((ROOT / "benchmarks").glob("*.py"))


def test_docs_name_the_toy_files_the_code_writes():
    from wildguard_lite.cli.demo import DEMO_NAME
    from wildguard_lite.toy.build import TOY_VERSION

    bad = []
    for path in NAMED:
        if path.name == "measurements.md":
            continue
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\btoy-v(\d+)\b", text):
            if int(match[1]) != TOY_VERSION:
                bad.append(f"{path.relative_to(ROOT)}: {match[0]} (the toy is toy-v{TOY_VERSION})")
        for match in re.finditer(r"\btoy[\w.-]*?-(f16|q8_0|q4_k_m)\.gguf\b", text):
            if not match[0].startswith(f"{DEMO_NAME}-"):
                bad.append(f"{path.relative_to(ROOT)}: {match[0]} (the demo writes {DEMO_NAME}-{match[1]}.gguf)")
    assert bad == []
