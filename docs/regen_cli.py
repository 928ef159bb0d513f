"""Rewrite docs/cli.md's help blocks from the live `--help` of every command and benchmark.

    python docs/regen_cli.py          # rewrite docs/cli.md
    python docs/regen_cli.py --check  # exit 1 if it differs (tests/test_cli_docs.py does this)

The prose between the blocks is kept; a command or benchmark without a section gets one at the
end (the sections follow the CLI's own order, `bench` and its benchmarks last). Help is rendered 100 columns wide, as a terminal of that width shows it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent / "cli.md"
COLUMNS = "100"
# A section: its heading names the command line, e.g. ## `classify` or ### `bench speed`.
HEADING = re.compile(r"^(#{2,3}) `([a-z -]+)`\n", re.M)
BLOCK = re.compile(r"```text\n.*?```\n", re.S)


def commands() -> list[str]:
    """Every command line that has a --help: the commands, then `bench NAME` for each benchmark."""
    from wildguard_lite.cli import COMMANDS
    from wildguard_lite.cli.bench import BENCHMARKS

    return [*COMMANDS, *(f"bench {name}" for name in BENCHMARKS)]


def live_help(command: str) -> str:
    """What `wildguard-lite COMMAND --help` prints, COLUMNS wide."""
    from wildguard_lite.cli import main

    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*command.split(), "--help"])
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return out.getvalue()


def documented(text: str) -> dict[str, str]:
    """Command -> the help block under its heading in the markdown."""
    headings = list(HEADING.finditer(text))
    out = {}
    for heading, following in zip(headings, [*headings[1:], None]):
        section = text[heading.end() : following.start() if following else len(text)]
        block = BLOCK.search(section)
        if block:
            out[heading.group(2)] = block.group(0)[len("```text\n") : -len("```\n")]
    return out


def regenerate(text: str) -> str:
    """The markdown with every help block replaced by the live help, missing sections added."""
    for command in commands():
        block = f"```text\n{live_help(command)}```\n"
        heading = re.search(rf"^#{{2,3}} `{re.escape(command)}`\n", text, re.M)
        if heading:
            following = HEADING.search(text, heading.end())
            end = following.start() if following else len(text)
            section = text[heading.end() : end]
            old = BLOCK.search(section)
            section = section[: old.start()] + block + section[old.end() :] if old else section + "\n" + block
            text = text[: heading.end()] + section + text[end:]
        else:
            level = "###" if command.startswith("bench ") else "##"
            text = text.rstrip("\n") + f"\n\n{level} `{command}`\n\n{block}"
    return text


def main(argv: list[str]) -> int:
    current = DOC.read_text(encoding="utf-8")
    wanted = regenerate(current)
    if "--check" in argv:
        if wanted != current:
            print(f"{DOC} differs from the live --help: run python docs/regen_cli.py", file=sys.stderr)
            return 1
        return 0
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(wanted, encoding="utf-8")
    tmp.replace(DOC)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
