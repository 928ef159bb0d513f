"""Temporary files and child processes of a conversion, and what happens to them on a kill.

Every temporary file or folder a conversion makes in its output folder is named
`.wgl-tmp-{pid}-{what}.{random}{suffix}`: the pid says whose it is, so a later run can remove
the leftovers of a run that was killed (its pid is gone) and never touches a running one's.
Registered temporaries are removed, and registered children killed, when the process gets
SIGTERM, SIGINT or SIGHUP while `cleanup_on_signals()` is active; children also get SIGKILL
from the kernel when this process dies (PR_SET_PDEATHSIG), even by SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from wildguard_lite.utils import umask

TEMP_PREFIX = ".wgl-tmp-"
_TEMP_NAME = re.compile(r"^\.wgl-tmp-(\d+)-")
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# What a signal must clean up: paths (files or folders) and child process ids.
_paths: set[Path] = set()
_children: set[int] = set()


def temp_prefix(what: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{what}."


def make_temp_file(folder: Path, what: str, suffix: str = "") -> Path:
    """An empty, registered temp file in `folder`, with the umask's usual mode (mkstemp makes
    0600 files: a server running as another user must be able to read the renamed result)."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(what), suffix=suffix, dir=folder)
    _paths.add(Path(name))
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(name)


def make_temp_dir(folder: Path, what: str) -> Path:
    """A registered temp folder in `folder` (mode 0700 until `publishable` widens it)."""
    path = Path(tempfile.mkdtemp(prefix=temp_prefix(what), dir=folder))
    _paths.add(path)
    return path


def register(path: Path) -> Path:
    _paths.add(Path(path))
    return Path(path)


def forget(path: Path) -> None:
    """After a temp path was renamed into place or removed."""
    _paths.discard(Path(path))


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove temporaries left in `folder` by killed runs: only names of our scheme whose
    process is gone. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _TEMP_NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            remove_path(path)
            removed.append(path.name)
    return removed


_PR_SET_PDEATHSIG = 1


def _death_signal_setter(parent: int):
    """A function for the child to run before exec: SIGKILL when `parent` dies. prctl is
    looked up here, in the parent: the forked child should only call it (Linux; elsewhere None)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def setter() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setter


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Popen a registered child that dies with this process, in its own process group."""
    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=_death_signal_setter(os.getpid()), **kwargs)
    _children.add(proc.pid)
    return proc


def reap(proc: subprocess.Popen) -> None:
    _children.discard(proc.pid)


def cleanup_now() -> int:
    """Kill registered children and remove registered temporaries; returns how many paths."""
    for pid in list(_children):
        try:
            os.killpg(pid, signal.SIGKILL)  # the child leads its own group (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
    _children.clear()
    count = 0
    for path in list(_paths):
        if path.exists() or path.is_symlink():
            remove_path(path)
            count += 1
    _paths.clear()
    return count


@contextmanager
def cleanup_on_signals():
    """While active, SIGTERM/SIGINT/SIGHUP remove the temporaries, kill the children and end
    the process with 128 + the signal's number. The handler ends the process itself, so it
    works while a worker thread is inside a long C call (llama.cpp's quantizer)."""

    def handler(signum, frame):
        count = cleanup_now()
        name = signal.Signals(signum).name
        try:
            sys.stderr.write(f"\ninterrupted by {name}: removed {count} temporary file(s)\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(128 + signum)

    previous = {}
    for sig in HANDLED_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
