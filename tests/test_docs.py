"""The docs stay readable: the README and BENCHMARKS within their length, and runs named by date and commit."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def test_the_readme_reads_in_one_sitting():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    long = [line[:60] for line in prose_lines(text) if len(line) > 200]
    assert not long, f"README lines over 200 characters: {long}"


def test_benchmarks_md_holds_current_figures_only():
    assert len((REPO / "BENCHMARKS.md").read_text().splitlines()) <= 400


def test_no_file_names_a_run_by_a_counter_of_the_teams_work():
    """A reader outside the team can resolve a date and a commit, not the number of a work session."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    counter = re.compile(r"\bsessions? ?[0-9]", re.IGNORECASE)
    named = [f for f in files if counter.search(f)]
    named += [f"{f}:{n}" for f in files if f.endswith((".md", ".py", ".toml", ".yml", ".yaml"))
              for n, line in enumerate((REPO / f).read_text(errors="replace").splitlines(), 1) if counter.search(line)]
    assert not named, named
