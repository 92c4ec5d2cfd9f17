"""Which roles a launcher puts on jemalloc, how it preloads it, and what a process reports it runs on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.soak import malloc_bytes
from stream.ops.allocator import (
    JEMALLOC_PATH_ENV,
    AllocatorError,
    find_jemalloc,
    launch_env,
    library_for,
    preloaded,
    roles_on_jemalloc,
    running_allocator,
)

ROLES = ("process", "replay", "learn", "score")


def test_auto_and_jemalloc_put_every_role_on_jemalloc_and_glibc_none():
    assert roles_on_jemalloc("auto", ROLES) == set(ROLES)
    assert roles_on_jemalloc("jemalloc", ROLES) == set(ROLES)
    assert roles_on_jemalloc("glibc", ROLES) == set()
    with pytest.raises(ValueError, match="auto, jemalloc, glibc"):
        roles_on_jemalloc("tcmalloc", ROLES)


def test_preloading_puts_the_library_first_once_and_keeps_what_was_preloaded():
    env = preloaded({"LD_PRELOAD": "/opt/a.so:/lib/je.so", "X": "1"}, "/lib/je.so")
    assert env == {"LD_PRELOAD": "/lib/je.so /opt/a.so", "X": "1"}
    assert preloaded({}, "/lib/je.so")["LD_PRELOAD"] == "/lib/je.so"


def test_launch_env_preloads_only_the_chosen_roles_and_never_edits_the_callers_env():
    base = {"PATH": "/bin"}
    assert launch_env(base, "learn", "auto", "/lib/je.so") == {"PATH": "/bin", "LD_PRELOAD": "/lib/je.so"}
    assert launch_env(base, "score", "auto", "/lib/je.so")["LD_PRELOAD"] == "/lib/je.so"
    assert launch_env(base, "score", "glibc", "/lib/je.so") == base
    assert launch_env(base, "learn", "glibc", "/lib/je.so") == base
    assert launch_env(base, "learn", "auto", None) == base       # not installed: glibc
    assert base == {"PATH": "/bin"}


def test_finding_jemalloc_honours_the_override_and_otherwise_searches_in_order(tmp_path):
    first, second = tmp_path / "a.so", tmp_path / "b.so"
    second.write_bytes(b"")
    assert find_jemalloc({}, [str(first), str(second)]) == str(second)
    assert find_jemalloc({}, [str(first)]) is None
    assert find_jemalloc({JEMALLOC_PATH_ENV: str(second)}, [str(first)]) == str(second)
    with pytest.raises(AllocatorError, match="is not a file"):
        find_jemalloc({JEMALLOC_PATH_ENV: str(first)})


def test_asking_for_jemalloc_without_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("stream.ops.allocator.JEMALLOC_CANDIDATES", (str(tmp_path / "none.so"),))
    with pytest.raises(AllocatorError, match="apt-get install libjemalloc2"):
        library_for("jemalloc", {})
    assert library_for("auto", {}) is None
    assert library_for("glibc", {}) is None


def test_running_allocator_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert running_allocator(maps) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert running_allocator(maps) == "glibc"
    assert running_allocator(tmp_path / "absent") == "unknown"


@pytest.mark.skipif(find_jemalloc() is None, reason="libjemalloc2 is not installed (make system-deps)")
def test_a_process_started_with_the_launch_env_runs_on_jemalloc():
    probe = [sys.executable, "-c", "from stream.ops.allocator import running_allocator; print(running_allocator())"]
    for role, choice, expected in (("learn", "auto", "jemalloc"), ("score", "auto", "jemalloc"),
                                   ("score", "glibc", "glibc")):
        env = launch_env({"PATH": "/usr/bin:/bin"}, role, choice, find_jemalloc())
        done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.strip() == expected, (role, done.stderr)


#: A child that allocates 64 MiB through malloc (numpy), then prints its malloc's figures before and after.
MALLOC_PROBE = """
import json
import numpy as np
from prometheus_client import generate_latest
from stream.ops.allocator import export_allocator
name = export_allocator("probe")
before = generate_latest().decode()
block = np.ones(8 << 20)
small = [bytearray(40) for _ in range(200_000)]      # ~19 MB of objects under 512 bytes: pymalloc's
after = generate_latest().decode()
print(json.dumps([name, before, after]))
"""


@pytest.mark.parametrize("choice", ["auto", "glibc"])
def test_malloc_bytes_follow_what_the_process_allocates_on_either_allocator(choice):
    """``recsys_malloc_bytes``: 64 MiB allocated shows in ``in_use`` (and ``held``) on the allocator the
    launch env gives a role (jemalloc for ``auto`` where installed, glibc otherwise)."""
    env = launch_env({"PATH": "/usr/bin:/bin"}, "score", choice, find_jemalloc())
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    name, before, after = json.loads(done.stdout)
    assert name == ("jemalloc" if choice == "auto" and find_jemalloc() else "glibc")
    assert f'allocator="{name}"' in after
    first, then = malloc_bytes(before), malloc_bytes(after)
    assert set(first) == set(then) == {"in_use", "held", "pymalloc in_use", "pymalloc held"}
    assert then["in_use"] - first["in_use"] >= 0.95 * 64 * 2**20     # others free meanwhile, too
    assert then["held"] >= then["in_use"] * 0.9
    # Python's small objects are not malloc's: they show in pymalloc's series (96 bytes each at least).
    assert then["pymalloc in_use"] - first["pymalloc in_use"] >= 200_000 * 96 * 0.95
    assert then["pymalloc held"] >= then["pymalloc in_use"]


def test_without_pymalloc_there_is_no_pymalloc_series():
    """``PYTHONMALLOC=malloc`` sends Python's objects through malloc: no arenas to report."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONMALLOC": "malloc"}
    done = subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    _, before, after = json.loads(done.stdout)
    assert set(malloc_bytes(after)) == {"in_use", "held"}
    assert malloc_bytes(after)["in_use"] - malloc_bytes(before)["in_use"] >= 64 * 2**20 + 200_000 * 40
