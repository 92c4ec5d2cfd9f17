"""The learner caps glibc's malloc arenas at start, and leaves an operator's MALLOC_ARENA_MAX alone."""

import os
import subprocess
import sys

import pytest

CALL = "from stream.ops.memory import limit_malloc_arenas; print(limit_malloc_arenas(2))"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_arenas_are_capped_unless_the_operator_chose():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped = subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True)
    assert capped.stdout.strip() == "True"
    chosen = subprocess.run([sys.executable, "-c", CALL], env={**env, "MALLOC_ARENA_MAX": "4"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "False"
