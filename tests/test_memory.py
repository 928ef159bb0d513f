"""server/memory.py: glibc's arenas capped at start-up, heaps trimmed after large requests."""

import threading

import pytest

from wildguard_lite.server import memory


@pytest.fixture
def glibc():
    if memory._libc() is None:
        pytest.skip("not glibc")


@pytest.mark.parametrize("env, arenas", [(None, 2), ("4", 4), ("lots", 2)])
def test_tame_allocator_caps_the_arenas(glibc, monkeypatch, env, arenas):
    if env is None:
        monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    else:
        monkeypatch.setenv("MALLOC_ARENA_MAX", env)
    assert memory.tame_allocator() == arenas
    import os

    assert os.environ["MALLOC_ARENA_MAX"] == str(arenas)  # child processes start with it


def test_a_large_request_is_followed_by_one_trim(glibc, monkeypatch):
    trimmed = threading.Event()
    calls = []
    monkeypatch.setattr(memory, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(memory, "trim", lambda: (calls.append(1), trimmed.set()))
    memory.trim_soon([{"prompt": "short"}])  # small: nothing scheduled
    big = [{"prompt": "x" * memory.TRIM_AFTER_CHARS}]
    memory.trim_soon(big)
    memory.trim_soon(big)  # falls together with the first: one trim
    assert trimmed.wait(5)
    threading.Event().wait(0.2)
    assert calls == [1]
