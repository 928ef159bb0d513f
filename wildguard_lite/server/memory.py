"""Memory bounded in bytes: glibc's allocator tamed for a threaded server.

glibc gives each thread that allocates its own heap ("arena", up to 8 per core) and keeps freed
memory in them: request threads that once parsed a 1 MB body each kept their heap, and a
server grew by hundreds of MiB that it never used again. Two arenas (`MALLOC_ARENA_MAX=2`) and
a trim after a large request return that memory. `MALLOC_ARENA_MAX` in the environment before
the process starts (the Dockerfile sets it) is the same; `serve` sets it through `mallopt` at
start-up, before its threads exist, so a plain `wildguard-lite serve` gets it too. Not glibc
(musl, macOS): nothing to do, both calls are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading

M_ARENA_MAX = -8  # glibc's malloc.h
DEFAULT_ARENAS = 2
# A request that held at least this many characters of text is followed by a trim, this many
# seconds later (once its body, JSON and plans are freed); trims that fall together run once.
TRIM_AFTER_CHARS = 256 << 10
TRIM_DELAY_S = 0.5
_trim_pending = threading.Lock()


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tame_allocator() -> int | None:
    """Cap glibc's arenas (the environment's `MALLOC_ARENA_MAX` wins, else DEFAULT_ARENAS);
    returns the cap set, or None where the allocator is not glibc."""
    libc = _libc()
    if libc is None:
        return None
    try:
        arenas = int(os.environ.get("MALLOC_ARENA_MAX", DEFAULT_ARENAS))
    except ValueError:
        arenas = DEFAULT_ARENAS
    arenas = max(1, arenas)
    if not libc.mallopt(M_ARENA_MAX, arenas):
        return None
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)  # child processes start with it
    return arenas


def trim() -> None:
    """Give the heaps' free memory back to the system (after a large request)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def text_chars(items) -> int:
    return sum(len(item.get("prompt") or "") + len(item.get("response") or "") for item in items)


def trim_soon(items) -> None:
    """After a request with large texts: trim TRIM_DELAY_S later, on a timer thread."""
    if text_chars(items) < TRIM_AFTER_CHARS or _libc() is None or not _trim_pending.acquire(blocking=False):
        return

    def run() -> None:
        _trim_pending.release()
        trim()

    timer = threading.Timer(TRIM_DELAY_S, run)
    timer.daemon = True
    timer.start()
