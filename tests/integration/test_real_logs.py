"""Real logs end to end over the wire: import (OBD and MovieLens layouts), backfill, evaluate, dump.

The files are made here in the public formats: an Open Bandit Dataset campaign CSV
(pandas' nameless index column, ISO timestamps, positions 1-3, true propensities,
hashed user features) and a MovieLens folder (ratings.csv + movies.csv).
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
from pathlib import Path

import pytest

from stream import schemas
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.policy.bus import read_versions
from tests.conftest import cli_command

pytestmark = pytest.mark.slow

ITEMS = 10


def obd_csv(path: Path, slates: int = 150, seed: int = 3) -> Path:
    """An OBD-format file: each timestamp one slate of 3 positions, items drawn with known propensities."""
    rng = random.Random(seed)
    weights = [1 + i for i in range(ITEMS)]
    share = [w / sum(weights) for w in weights]
    header = ["", "timestamp", "item_id", "position", "click", "propensity_score",
              *(f"user_feature_{k}" for k in range(4)), *(f"user-item_affinity_{k}" for k in range(ITEMS))]
    rows, index = [], 0
    for s in range(slates):
        user = [f"{rng.getrandbits(64):016x}" for _ in range(4)]
        stamp = f"2019-11-24 {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{rng.randrange(1000):03d}000+00:00"
        items = rng.sample(range(ITEMS), 3)
        for position, item in enumerate(items, start=1):
            clicked = int(rng.random() < 0.05 + 0.03 * item)
            rows.append([index, stamp, item, position, clicked, round(share[item], 6), *user,
                         *(round(rng.random(), 3) for _ in range(ITEMS))])
            index += 1
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def direct_per_item(path: Path) -> dict[str, tuple[float, float]]:
    """IPS and SNIPS of 'always item a' straight from the CSV, as OBP computes them per action."""
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    n = len(rows)
    out = {}
    for item in {r["item_id"] for r in rows}:
        mine = [(float(r["click"]), float(r["propensity_score"])) for r in rows if r["item_id"] == item]
        weighted = sum(c / p for c, p in mine)
        out[item] = (weighted / n, weighted / sum(1 / p for _, p in mine))
    return out


def run_cli(cli_env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=cli_env, capture_output=True, text=True, timeout=timeout)


def test_obd_logs_imported_backfilled_and_evaluated(settings, topics, cli_env, tmp_path):
    path = obd_csv(tmp_path / "all.csv")
    dry = run_cli(cli_env, "import", str(path), "--preset", "obd", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["impressions"] == 150
    assert read_topic(settings, topic_name(settings, "impressions")) == []      # a dry run sends nothing

    imported = run_cli(cli_env, "import", str(path), "--preset", "obd", "--json")
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert (report["rows"], report["impressions"], report["dead_lettered"], report["split_slates"]) == (450, 150, 0, 0)
    assert report["candidates"] == f"all {ITEMS} items of the files"
    impressions = [schemas.decode("impressions", m.value())
                   for m in read_topic(settings, topic_name(settings, "impressions"))]
    assert all(len(i.shown) == 3 and sorted(s.position for s in i.shown) == [0, 1, 2] for i in impressions)
    assert all(len(i.candidates) == ITEMS and i.context.attrs for i in impressions)

    backfill = run_cli(cli_env, "process", "--until-caught-up", "--metrics-port", "0")
    assert backfill.returncode == 0, backfill.stderr
    experiences = [schemas.decode("experiences", m.value())
                   for m in read_topic(settings, topic_name(settings, "experiences"))]
    assert len({e.event_id for e in experiences}) == 450                        # every row, once

    evaluated = run_cli(cli_env, "evaluate", "--policy", "logged", "--per-item", "--bootstrap", "200", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert (result["shown_items"], result["decisions"]) == (450, 150)
    direct = direct_per_item(path)
    assert {row["item"] for row in result["per_item"]} == set(direct)
    for row in result["per_item"]:
        ips, snips = direct[row["item"]]
        assert row["ips"]["value"] == pytest.approx(ips, rel=1e-9, abs=1e-12)
        assert row["snips"]["value"] == pytest.approx(snips, rel=1e-9, abs=1e-12)
        assert row["ips"]["low"] <= row["ips"]["value"] <= row["ips"]["high"]
    with path.open() as fh:
        top = [float(r["click"]) for r in csv.DictReader(fh) if r["position"] == "1"]
    assert result["logged"]["ips"]["value"] == pytest.approx(sum(top) / len(top))

    # A version learned from these logs (a backfill: it exits once everything is trained on), judged on them
    # with the gate's estimators.
    learned = run_cli(cli_env, "learn", "--until-caught-up", "--threads", "1", "--metrics-port", "0", timeout=240)
    assert learned.returncode == 0, learned.stderr
    assert "backfill trained on everything" in learned.stderr
    assert read_versions(settings)
    judged = run_cli(cli_env, "evaluate", "--policy", "latest", "--baseline", "1", "--bootstrap", "200", "--json")
    assert judged.returncode == 0, judged.stderr
    policy = json.loads(judged.stdout)["policy"]
    paired = json.loads(judged.stdout)["difference"]          # the gate's paired comparison against v1
    assert paired["low"] <= paired["dr"] <= paired["high"] and paired["decisions"] == 150
    assert policy["decisions"] == 150 and policy["version"] >= 1
    for name in ("ips", "snips", "dm", "dr"):
        assert policy[name]["low"] <= policy[name]["value"] <= policy[name]["high"]

    dump = tmp_path / "experiences.parquet"
    dumped = run_cli(cli_env, "experiences", "dump", "--format", "parquet", "--out", str(dump))
    assert dumped.returncode == 0, dumped.stderr
    offline = run_cli(cli_env, "evaluate", "--policy", "logged", "--from-file", str(dump), "--bootstrap", "0",
                      "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["logged"]["ips"]["value"] == pytest.approx(result["logged"]["ips"]["value"])


def movielens_folder(folder: Path, users: int = 12, per_user: int = 6) -> Path:
    folder.mkdir()
    rng = random.Random(5)
    movies = [(m, f"Movie {m} ({1990 + m})", "Comedy|Drama" if m % 2 else "Action") for m in range(1, 9)]
    with (folder / "movies.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows(movies)
    ratings = []
    t = 964_982_703
    for n in range(users * per_user):
        t += rng.randrange(1, 40)
        ratings.append((1 + n % users, rng.randrange(1, 9), rng.choice([1.0, 2.5, 3.0, 4.0, 4.5, 5.0]), t))
    ratings.append((1, 3, "not a rating", t + 1))              # a bad row: dead-lettered with its row number
    with (folder / "ratings.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows(ratings)
    return folder / "ratings.csv"


def test_movielens_logs_imported_backfilled_and_refused_for_ope(settings, topics, cli_env, tmp_path):
    path = movielens_folder(tmp_path / "ml")
    imported = run_cli(cli_env, "import", str(path), "--preset", "movielens", "--json")
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    with path.open() as fh:
        good = [r for r in csv.DictReader(fh) if r["rating"] != "not a rating"]
    positives = sum(float(r["rating"]) >= 4 for r in good)
    assert (report["impressions"], report["clicks"], report["items"]) == (len(good), positives, 8)
    assert report["reasons"] == {"schema": 1}
    letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
    assert [(d.reason, d.line) for d in letters] == [("schema", len(good) + 1)]
    assert "'rating'" in letters[0].error and "not a number" in letters[0].error
    items = [schemas.decode("items", m.value()) for m in read_topic(settings, topic_name(settings, "items"))]
    assert {i.title for i in items} >= {"Movie 1 (1991)"} and items[0].description.startswith("Genres:")

    backfill = run_cli(cli_env, "process", "--until-caught-up", "--metrics-port", "0")
    assert backfill.returncode == 0, backfill.stderr
    experiences = [schemas.decode("experiences", m.value())
                   for m in read_topic(settings, topic_name(settings, "experiences"))]
    kinds = sorted(e.kind for e in {e.event_id: e for e in experiences}.values())
    assert kinds.count("click") == positives and kinds.count("no_click") == len(good) - positives

    refused = run_cli(cli_env, "evaluate", "--json")
    assert refused.returncode == 1
    assert "lack candidates" in json.loads(refused.stdout)["refused"] and "lack candidates" in refused.stderr

    learned = run_cli(cli_env, "learn", "--until-caught-up", "--threads", "1", "--metrics-port", "0", timeout=240)
    assert learned.returncode == 0, learned.stderr
    ranked = run_cli(cli_env, "evaluate", "--ranking-only", "--json")
    assert ranked.returncode == 0, ranked.stderr
    result = json.loads(ranked.stdout)["policy"]["ranking"]
    assert result["scored"] == len(good) and 0.0 <= result["auc"] <= 1.0
    assert result["positive_share"] == pytest.approx(positives / len(good))

    dumped = run_cli(cli_env, "experiences", "dump", "--since", "964982703")
    assert dumped.returncode == 0, dumped.stderr
    assert len(dumped.stdout.splitlines()) == len(experiences)
