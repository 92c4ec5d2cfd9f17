"""A fixed mmap threshold stops glibc's ratchet: after a large block is freed, a smaller one that is
still above the threshold gets its own mapping instead of a place in the heap that outlives it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Shared by the probes below, each run in a fresh interpreter: glibc's malloc, free and mallinfo2.
GLIBC = """
import ctypes, sys
from stream.ops.memory import fix_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
"""

# Free one 8 MiB block, then hold a 1 MiB one, and print how many blocks are mapped.
RATCHET = GLIBC + """
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(256 * 1024)
libc.free(libc.malloc(8 << 20))     # glibc's default raises the threshold to 8 MiB here
before = libc.mallinfo2().hblks
held = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
"""

# Fix the threshold (ours, or a bare mallopt), free a 2 MiB block at the top of the heap, and print how many
# bytes the heap shrank by at once.
TOP = GLIBC + """
if sys.argv[1] == "ours":
    assert fix_mmap_threshold(4 << 20)
else:
    assert libc.mallopt(-3, 4 << 20)
block = libc.malloc(2 << 20)
before = libc.mallinfo2().arena
libc.free(block)
print(before - libc.mallinfo2().arena)
"""


def probe(script: str, mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_a_fixed_threshold_maps_blocks_the_default_would_keep_in_the_heap():
    assert probe(RATCHET, "default") == 0
    assert probe(RATCHET, "fixed") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_an_operators_setting_is_left_alone():
    call = "from stream.ops.memory import fix_mmap_threshold; print(fix_mmap_threshold(131072))"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", call], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_a_fixed_threshold_keeps_the_heap_top_for_the_trimmer_to_give_back():
    """A bare fixed threshold drops the trim threshold to 128 KiB: every large free shrinks the heap, and the
    next update faults it in again. Ours keeps it; the trimmer gives it back on its schedule."""
    assert probe(TOP, "bare") >= 1 << 20
    assert probe(TOP, "ours") == 0
