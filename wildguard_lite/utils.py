"""Small shared helpers with no heavy imports: process-level stderr capture, files left empty,
file modes and digests, and the command line of a child Python."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

# fd 2 is one per process: two captures at once would restore each other's descriptors.
_STDERR_LOCK = threading.RLock()


class CapturedStderr:
    """What native code wrote to fd 2 inside `capture_stderr()`, readable after it ends."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 4, chars: int = 600) -> str:
        """The last lines that report an error (else the last lines), joined with ' | ' so an
        error message stays on one line."""
        all_lines = [line.strip() for line in self.text.splitlines() if line.strip()]
        errors = [line for line in all_lines if any(w in line.lower() for w in ("error", "fail", "invalid", "assert"))]
        return " | ".join((errors or all_lines)[-lines:])[-chars:]


@contextlib.contextmanager
def capture_stderr() -> Iterator[CapturedStderr]:
    """Send fd 2 (native libraries write there directly) to a temporary file for the duration.

    Unlike sending it to /dev/null, the text stays available: show its tail when the native
    call fails, drop it when it succeeds. Python's own sys.stderr is flushed into it too.
    """
    import sys

    captured = CapturedStderr()
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no real stderr (some embedded hosts): nothing to capture
            yield captured
            return
        with tempfile.TemporaryFile() as sink:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            # Python-level writers (llama-cpp-python's log callback) use sys.stderr, which may
            # not be fd 2 (pytest, notebooks, servers): point it at the sink too.
            python_stderr = sys.stderr
            sys.stderr = io.TextIOWrapper(
                os.fdopen(os.dup(sink.fileno()), "wb"), encoding="utf-8", errors="replace", line_buffering=True
            )
            try:
                yield captured
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.close()
                sys.stderr = python_stderr
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                captured.text = sink.read().decode("utf-8", "replace")


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 for the duration (native chatter on success paths)."""
    with capture_stderr():
        yield


@contextlib.contextmanager
def remove_if_left_empty(path: Path) -> Iterator[None]:
    """Remove `path` on error if this block created it and left it empty (an up-front refusal
    must not leave an empty `.partial` behind); a file with content is kept for resuming."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            if not existed and path.is_file() and path.stat().st_size == 0:
                path.unlink()
        raise


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """The file's sha256 (hex), read in 4 MiB blocks: the manifest's and `pull`'s digest."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publishable(folder: Path) -> None:
    """mkdtemp and some writers make private modes (0700/0600); give a finished folder and its
    files the umask's usual ones, so another user (a server in a container) can read them."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~mask)


def python_command(*args: str) -> list[str]:
    """`[sys.executable, *args]` for a child Python (`-m module ...` or `-c code ...`) that
    imports the installed package, never a `wildguard_lite/` in the working directory: run
    from a checkout after a non-editable install, `python -m` and `-c` put the working
    directory first on sys.path, and the checkout's folder (without the convert/ and
    benchmarks/ the install maps into it) shadowed the install. Python 3.11+ has `-P` for
    this; on 3.10 the child drops that first entry itself, before any import."""
    if len(args) < 2 or args[0] not in ("-m", "-c"):
        raise ValueError(f"python_command takes '-m MODULE' or '-c CODE', got {list(args[:1])}")
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", *args]
    if args[0] == "-m":
        code = f"import runpy, sys; del sys.path[0]; runpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)"
        return [sys.executable, "-c", code, *args[2:]]
    return [sys.executable, "-c", "import sys; del sys.path[0]\n" + args[1], *args[2:]]
