"""`recsys-stream ingest` end to end: a file of good and bad lines, over the wire."""

from __future__ import annotations

import json
import subprocess

from stream import schemas
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.conftest import cli_command
from tests.events import valid


def test_ingest_file_with_good_and_bad_lines(tmp_path, settings, cli_env):
    good = [valid("clicks") | {"event_id": f"c{i}", "user_id": f"u{i % 3}"} for i in range(5)]
    lines = [
        json.dumps(good[0]),
        json.dumps(good[1]),
        '{"event_id": "broken", "user_id": ',                               # line 3: malformed JSON
        json.dumps(valid("clicks") | {"ts": "not a time"}),                  # line 4: wrong type
        json.dumps(good[2]),
        "",                                                                   # line 6: blank, skipped
        json.dumps(valid("clicks") | {"pad": "x" * schemas.MAX_EVENT_BYTES}),  # line 7: oversized
        '{"event_id": "deep", "x": ' + "[" * 1000 + "]" * 1000 + "}",          # line 8: nested 1,001 levels
        json.dumps(good[3]),
        json.dumps(good[4] | {"from_the_future": True}),                     # unknown field kept
    ]
    path = tmp_path / "clicks.jsonl"
    path.write_text("\n".join(lines) + "\n")

    done = subprocess.run(cli_command("ingest", str(path), "--topic", "clicks", "--json"),
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["read"], report["produced"], report["dead_lettered"], report["blank"]) == (9, 5, 4, 1)
    assert report["reasons"] == {"malformed_json": 2, "schema": 1, "oversized": 1}

    produced = [json.loads(m.value()) for m in read_topic(settings, topic_name(settings, "clicks"))]
    assert sorted(p["event_id"] for p in produced) == [f"c{i}" for i in range(5)]
    assert any(p.get("from_the_future") for p in produced)

    letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
    assert sorted((d.line, d.reason) for d in letters) == [(3, "malformed_json"), (4, "schema"), (7, "oversized"),
                                                          (8, "malformed_json")]
    assert all(d.source_topic == topic_name(settings, "clicks") and d.component == "ingest" for d in letters)


def test_ingest_human_output_and_missing_file(tmp_path, cli_env):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(valid("items")) + "\n{nope\n")
    done = subprocess.run(cli_command("ingest", str(path), "--topic", "items"),
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "read 2, produced 1, dead-lettered 1 (malformed_json: 1)" in done.stdout
    missing = subprocess.run(cli_command("ingest", str(tmp_path / "nope.jsonl"), "--topic", "items"),
                             env=cli_env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope.jsonl" in missing.stderr
