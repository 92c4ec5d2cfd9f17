"""The trimmer hands memory glibc holds freed back to the system, and stops when asked."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import pytest

from stream.ops.memory import MALLOC_TRIM_RELEASED, MallocTrimmer, resident_parts, rss_bytes

BLOCK = 64 * 1024          # under glibc's mmap threshold: served from the heap, kept there when freed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_is_given_back_and_counted():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(1600)]          # 100 MiB
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)
    for block in blocks[:-1]:       # the last one pins the top of the heap, so free() alone returns nothing
        libc.free(block)
    held = rss_bytes(os.getpid())
    released = MALLOC_TRIM_RELEASED.labels("test")
    before = released._value.get()
    stop = threading.Event()
    trimmer = MallocTrimmer(0.05, stop, "test")
    if not trimmer.available:
        pytest.skip("no glibc here")
    trimmer.start()
    deadline = time.monotonic() + 10
    while trimmer.trims < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    trimmer.join(5)
    libc.free(blocks[-1])
    assert not trimmer.is_alive()
    assert trimmer.trims >= 2
    assert released._value.get() - before > 50 * 2**20
    assert rss_bytes(os.getpid()) < held - 50 * 2**20


class Node:
    def __init__(self) -> None:
        self.other = self           # a cycle: reference counting alone never frees it


def test_each_round_frees_cyclic_garbage_the_tuned_collector_would_keep_for_long():
    import gc
    import weakref

    from stream.ops.memory import YOUNG_GC_COLLECTED

    thresholds = gc.get_threshold()
    gc.set_threshold(10**9)          # as after tune_garbage_collector in a role that frees nearly all it allocates
    try:
        alive = [weakref.ref(Node()) for _ in range(1000)]
        assert sum(ref() is not None for ref in alive) == 1000
        collected = YOUNG_GC_COLLECTED.labels("test-gc")
        before = collected._value.get()
        stop = threading.Event()
        trimmer = MallocTrimmer(0.05, stop, "test-gc")
        trimmer.start()
        deadline = time.monotonic() + 10
        while any(ref() is not None for ref in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        trimmer.join(5)
        assert all(ref() is None for ref in alive)
        assert collected._value.get() - before >= 1000
    finally:
        gc.set_threshold(*thresholds)


def test_resident_memory_splits_into_anonymous_and_file_backed_pages(tmp_path):
    """Touching 64 MB of fresh memory shows as anonymous pages; paging in a mapped file as file pages."""
    import mmap

    before = resident_parts(os.getpid())
    assert set(before) >= {"anon", "file"}
    assert before["anon"] + before["file"] + before.get("shmem", 0) == pytest.approx(rss_bytes(os.getpid()),
                                                                                    abs=2**20)
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    touched = resident_parts(os.getpid())
    assert touched["anon"] - before["anon"] > 60 * 2**20
    path = tmp_path / "mapped"
    path.write_bytes(b"y" * (32 * 2**20))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) > 0
        assert resident_parts(os.getpid())["file"] - touched["file"] > 30 * 2**20
    assert resident_parts(None) == {} and resident_parts(2**22 + 12345) == {}
