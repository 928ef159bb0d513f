"""`wildguard-lite SUBCOMMAND ...`: one module per subcommand, each with its own main()."""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "classify": ("classify", "classify exchanges with a converted model"),
    "convert": ("convert", "convert a Hugging Face checkpoint to GGUF (quantized) with a manifest"),
    "pull": ("pull", "download a pre-converted GGUF from a hub repo, sha256-verified"),
    "toy": ("toy", "the small trained toy WildGuard used by tests and the demo (cached; built once)"),
    "demo": ("demo", "end to end on the toy: build, convert, classify, print a table"),
    "serve": ("serve", "moderation HTTP API (OpenAI-compatible /v1/moderations, /v1/classify)"),
    "bench": ("bench", "benchmarks: accuracy, speed, batch, streaming, serving (bench NAME)"),
    "recommend": ("recommend", "pick a GGUF file for a RAM budget from a `bench ladder` report"),
}


def _usage() -> str:
    lines = ["usage: wildguard-lite COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    return module.main(argv[1:])


def run(func, *args) -> int:
    """Run a subcommand body: user errors become one line on stderr and exit status 2; a
    reader that closed our stdout (`| head`) ends the run quietly."""
    import os

    from ..errors import WildGuardLiteError

    try:
        code = func(*args) or 0
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not as an exit-time traceback
        return code
    except WildGuardLiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader is gone: nothing more to say to it. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again, and exit as a SIGPIPE'd tool does.
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), sys.stdout.fileno())
        return 128 + 13
    except OSError as exc:  # a file the command writes or reads failed (disk full, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
