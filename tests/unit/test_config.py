"""Settings from RECSYS_* variables, secret masking and the missing-broker message."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from stream.config import MissingBootstrapError, Settings
from stream.kafka.clients import consumer_config, producer_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("RECSYS_"):
            monkeypatch.delenv(key)


def test_reads_prefixed_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("RECSYS_TOPIC_PREFIX", "shop1.")
    monkeypatch.setenv("RECSYS_PARTITIONS", "12")
    monkeypatch.setenv("RECSYS_KAFKA_EXTRA", '{"client.rack": "eu-1a"}')
    s = Settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.topic_prefix == "shop1."
    assert s.partitions == 12
    assert s.kafka_extra == {"client.rack": "eu-1a"}


def test_blank_bootstrap_means_unset(monkeypatch):
    monkeypatch.setenv("RECSYS_BOOTSTRAP_SERVERS", "  ")
    assert Settings().bootstrap_servers is None


def test_missing_bootstrap_points_at_the_broker_command():
    with pytest.raises(MissingBootstrapError) as info:
        Settings().require_bootstrap("process")
    assert "recsys-stream broker" in str(info.value)
    assert "RECSYS_BOOTSTRAP_SERVERS" in str(info.value)


def test_secrets_are_masked_everywhere_they_are_shown(monkeypatch):
    monkeypatch.setenv("RECSYS_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("RECSYS_HMAC_KEY", "sign-me")
    monkeypatch.setenv("RECSYS_KAFKA_EXTRA", '{"sasl.oauthbearer.client.secret": "s3cr3t"}')
    s = Settings()
    shown = repr(s) + str(s.masked())
    for secret in ("hunter2", "sign-me", "s3cr3t"):
        assert secret not in str(s.masked())
    assert "hunter2" not in shown and "sign-me" not in shown
    assert s.hmac_key.get_secret_value() == "sign-me"


def test_invalid_values_are_refused_with_the_field_name(monkeypatch):
    monkeypatch.setenv("RECSYS_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()
    monkeypatch.delenv("RECSYS_PARTITIONS")
    monkeypatch.setenv("RECSYS_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValidationError, match="security_protocol"):
        Settings()


def test_security_settings_reach_every_client():
    s = Settings(
        bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc", sasl_password="pw", ssl_ca_location="/etc/ca.pem",
    )
    for conf in (producer_config(s, "x"), consumer_config(s, "x", "g")):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
        assert conf["sasl.username"] == "svc"
        assert conf["sasl.password"] == "pw"
        assert conf["ssl.ca.location"] == "/etc/ca.pem"


def test_producer_is_idempotent_and_consumer_stores_offsets_manually():
    s = Settings(bootstrap_servers="k:9092")
    p = producer_config(s, "ingest")
    assert p["enable.idempotence"] is True and p["acks"] == "all"
    c = consumer_config(s, "process", "g")
    assert c["enable.auto.offset.store"] is False
    assert c["session.timeout.ms"] <= 6000
    # Long enough for the embedded broker to list a partition of tens of thousands of batches.
    assert c["fetch.wait.max.ms"] >= 100


def test_describe_lists_every_variable():
    names = {row[0] for row in Settings.describe()}
    assert "RECSYS_BOOTSTRAP_SERVERS" in names and "RECSYS_HMAC_KEY" in names
    assert len(names) == len(Settings.model_fields)


def test_an_operators_kafka_tuning_wins_over_the_codes_defaults(monkeypatch):
    monkeypatch.setenv("RECSYS_KAFKA_EXTRA", '{"linger.ms": "40", "compression.type": "lz4", '
                                             '"session.timeout.ms": "10000"}')
    s = Settings(bootstrap_servers="k:9092")
    for conf in (producer_config(s, "ingest"), producer_config(s, "scorer", **{"linger.ms": 250})):
        assert conf["linger.ms"] == "40" and conf["compression.type"] == "lz4"
        assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert consumer_config(s, "process", "g")["session.timeout.ms"] == "10000"


@pytest.mark.parametrize("key", ["acks", "enable.idempotence", "enable.auto.offset.store", "group.id",
                                 "bootstrap.servers"])
def test_kafka_extra_may_not_weaken_the_delivery_guarantees(monkeypatch, key):
    monkeypatch.setenv("RECSYS_KAFKA_EXTRA", f'{{"{key}": "1", "client.rack": "eu-1a"}}')
    with pytest.raises(ValidationError, match=f"may not set {key}"):
        Settings()


def test_compression_is_zstd_unless_set_and_reaches_every_producer(monkeypatch):
    from stream.kafka.clients import producer_config

    assert producer_config(Settings(bootstrap_servers="k:9092"), "t")["compression.type"] == "zstd"
    monkeypatch.setenv("RECSYS_COMPRESSION", "lz4")
    assert producer_config(Settings(bootstrap_servers="k:9092"), "t")["compression.type"] == "lz4"
    monkeypatch.setenv("RECSYS_COMPRESSION", "brotli")
    with pytest.raises(ValidationError, match="compression"):
        Settings()


def test_settings_given_to_a_child_read_back_equal(monkeypatch, tmp_path):
    """Every field crosses the process boundary (secrets, the JSON of extras, flags, an unset field
    stays unset), and a parent's stray RECSYS_* variable does not."""
    from stream.config import child_environment

    monkeypatch.setenv("RECSYS_ARMS", "a=50,b=50")          # the parent's, not in the settings given
    given = Settings(bootstrap_servers="k1:9092", topic_prefix="shop1.", partitions=3, scoring_partitions=16,
                     data_dir=tmp_path, hmac_key="k" * 32, sasl_password="pw", allow_unsigned=True,
                     kafka_extra={"client.rack": "eu-1a"}, compression="lz4", log_level="WARNING", arms=None)
    env = child_environment(given, RECSYS_STOP_GRACE_SECONDS="3")
    assert "RECSYS_ARMS" not in env and env["RECSYS_STOP_GRACE_SECONDS"] == "3"
    for key in [k for k in os.environ if k.startswith("RECSYS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("RECSYS_"):
            monkeypatch.setenv(key, value)
    assert Settings() == given.model_copy(update={"stop_grace_seconds": 3.0})


def test_the_embedded_broker_gets_one_partition_per_topic_unless_one_was_set(monkeypatch):
    from stream.kafka.broker import EMBEDDED_PARTITIONS, embedded_settings

    assert embedded_settings(Settings(), "127.0.0.1:1").partitions == EMBEDDED_PARTITIONS == 1
    assert embedded_settings(Settings(partitions=4), "127.0.0.1:1").partitions == 4
    monkeypatch.setenv("RECSYS_PARTITIONS", "6")
    live = embedded_settings(Settings(), "127.0.0.1:1")
    assert (live.partitions, live.bootstrap_servers) == (6, "127.0.0.1:1")
