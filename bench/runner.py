"""The command-line shell every benchmark shares: --json, progress on stderr, a one-line summary."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

Progress = Callable[[str], None]


def run_benchmark(
    doc: str,
    configure: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[argparse.Namespace, Progress | None], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    configure(parser)
    args = parser.parse_args(argv)
    say = None if args.json else (lambda message: print(message, file=sys.stderr, flush=True))
    out = measure(args, say)
    print(json.dumps(out, indent=2) if args.json else summary(out))
    return 0


def stop_processes(*procs: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM every role a benchmark started, then wait; one that does not stop in time is killed."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
