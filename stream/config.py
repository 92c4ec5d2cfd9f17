"""One settings object for every role, read from ``RECSYS_*`` environment variables.

Each field's description names its variable; secrets are ``SecretStr`` so they never
print by accident. Roles take a ``Settings`` instance instead of reading the
environment themselves, which keeps tests and the demo in control of configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream.schemas import POLICY_NAME


class MissingBootstrapError(RuntimeError):
    """Raised when a role needs a broker but none is configured."""

    def __init__(self, role: str) -> None:
        super().__init__(
            f"`{role}` needs a Kafka broker but RECSYS_BOOTSTRAP_SERVERS is not set.\n"
            "Start the embedded broker in another terminal with `recsys-stream broker` and "
            "export the address it prints, e.g. RECSYS_BOOTSTRAP_SERVERS=127.0.0.1:9092, "
            "or point it at your own Kafka cluster."
        )


#: librdkafka settings the code's delivery guarantees rest on (idempotent, acknowledged writes; offsets
#: stored only after effects are durable; partitioning by key as Java clients do; reading a topic to its
#: end). They are set in code; RECSYS_KAFKA_EXTRA may tune anything else, and wins over the code's defaults.
GUARANTEE_KEYS = frozenset({
    "bootstrap.servers", "enable.idempotence", "acks", "request.required.acks", "delivery.report.only.error",
    "partitioner", "transactional.id", "group.id", "enable.auto.commit", "enable.auto.offset.store",
    "auto.offset.reset", "enable.partition.eof", "isolation.level",
})


class Settings(BaseSettings):
    """Effective configuration of a process."""

    # An empty variable is an unset one: compose passes `${VAR:-}` through as "".
    model_config = SettingsConfigDict(env_prefix="RECSYS_", frozen=True, extra="ignore", env_ignore_empty=True)

    bootstrap_servers: str | None = Field(
        None,
        description="RECSYS_BOOTSTRAP_SERVERS: Kafka bootstrap servers (host:port,...). "
        "Unset: `demo` and the tests start an embedded broker; other roles refuse to start.",
    )
    topic_prefix: str = Field(
        "", description="RECSYS_TOPIC_PREFIX: prepended to every topic name (e.g. `shop1.`)."
    )
    partitions: int = Field(
        4, ge=1, le=1024, description="RECSYS_PARTITIONS: partitions of the keyed event topics (unset, a demo or "
        "benchmark that starts the embedded broker uses 1: its cost follows the batches it holds)."
    )
    scoring_partitions: int | None = Field(
        None, ge=1, le=1024,
        description="RECSYS_SCORING_PARTITIONS: partitions of score-requests and score-responses (unset: "
        "RECSYS_PARTITIONS); scorers sharing a prefix split them. On the embedded broker a fetch costs more "
        "the more batches its partition holds and Kafka scoring makes a batch per request: at 500 requests/s "
        "32 partitions kept p99 at 0.1-0.7 s over 20 s where 4 reached 3.5-8.1 s, but an idle scorer's polling "
        "of 32 costs the broker 0.38 cores instead of 0.20 (BENCHMARKS.md, Scorer).",
    )
    replication_factor: int = Field(
        1, ge=1, le=16, description="RECSYS_REPLICATION_FACTOR: replicas of each topic created."
    )
    event_retention_ms: int = Field(
        7 * 24 * 3600 * 1000,
        ge=60_000,
        description="RECSYS_EVENT_RETENTION_MS: retention of impressions, clicks and purchases.",
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="RECSYS_MAX_MESSAGE_BYTES: largest message the broker accepts; "
        "policy weights are chunked below it.",
    )

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="RECSYS_SECURITY_PROTOCOL: Kafka security.protocol."
    )
    sasl_mechanism: str | None = Field(
        None, description="RECSYS_SASL_MECHANISM: e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512."
    )
    sasl_username: str | None = Field(None, description="RECSYS_SASL_USERNAME.")
    sasl_password: SecretStr | None = Field(None, description="RECSYS_SASL_PASSWORD (secret).")
    ssl_ca_location: str | None = Field(None, description="RECSYS_SSL_CA_LOCATION: CA bundle path.")
    ssl_certificate_location: str | None = Field(
        None, description="RECSYS_SSL_CERTIFICATE_LOCATION: client certificate path."
    )
    ssl_key_location: str | None = Field(None, description="RECSYS_SSL_KEY_LOCATION: client key path.")
    ssl_key_password: SecretStr | None = Field(None, description="RECSYS_SSL_KEY_PASSWORD (secret).")
    compression: Literal["zstd", "lz4", "gzip", "snappy", "none"] = Field(
        "zstd", description="RECSYS_COMPRESSION: the codec every producer of the loop writes with. zstd shrinks "
        "the join's experiences to ~0.13 of their bytes (lz4 ~0.21); a client that cannot read zstd (kafkajs "
        "without a zstd codec registered, say) reads lz4, gzip or none.",
    )
    kafka_extra: dict[str, str] = Field(
        default_factory=dict,
        description="RECSYS_KAFKA_EXTRA: JSON object of extra librdkafka settings passed to "
        'every client, e.g. {"client.rack": "eu-1a"} or {"linger.ms": "20"}; they win over the code\'s '
        "defaults, except the settings the delivery guarantees rest on (acks, idempotence, offset storing, "
        "group, partitioner), which are refused.",
    )

    user_features: int = Field(
        16, ge=0, le=512,  # schemas.MAX_FEATURES
        description="RECSYS_USER_FEATURES: the policy's width of context.features. A context of another "
        "width is refused (422 at the scorer, dead-lettered as `width` by the replay service), never cut or padded.",
    )
    data_dir: Path = Field(
        Path("./recsys-data"),
        description="RECSYS_DATA_DIR: checkpoints, replay store and caches live here.",
    )
    policy_name: str = Field(
        "default",
        pattern=POLICY_NAME,
        description="RECSYS_POLICY_NAME: key of the policy on the policies topic.",
    )
    arms: str | None = Field(
        None, description="RECSYS_ARMS: an online experiment's arms, policy names with their shares of users "
        "(`A=50,B=50`; `score --arms` wins). Unset: one arm, RECSYS_POLICY_NAME.",
    )
    experiment: str = Field(
        "default", pattern=POLICY_NAME,
        description="RECSYS_EXPERIMENT: name of the online experiment; with the user id it decides each user's "
        "arm, so a new name deals users out afresh.",
    )
    hmac_key: SecretStr | None = Field(
        None, description="RECSYS_HMAC_KEY (secret): signs and verifies policy versions; required unless "
        "RECSYS_ALLOW_UNSIGNED=1 (`recsys-stream keygen` prints a new one)."
    )
    hmac_previous_key: SecretStr | None = Field(
        None, description="RECSYS_HMAC_PREVIOUS_KEY (secret): during a key rotation, versions signed with it "
        "still verify until RECSYS_HMAC_PREVIOUS_KEY_UNTIL."
    )
    hmac_previous_key_until: float | None = Field(
        None, ge=0, description="RECSYS_HMAC_PREVIOUS_KEY_UNTIL: epoch seconds; the previous key verifies "
        "nothing after this moment (required with RECSYS_HMAC_PREVIOUS_KEY)."
    )
    allow_unsigned: bool = Field(
        False, description="RECSYS_ALLOW_UNSIGNED: 1 publishes and adopts unsigned policy versions without a "
        "key (anyone who can write to the policies topic can then serve any model; logged and exported)."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="RECSYS_METRICS_PORT: port of /metrics (0 picks a free port for "
        "long-running roles; finite jobs serve none unless set).",
    )
    stop_grace_seconds: float = Field(
        20.0, gt=0, le=3600,
        description="RECSYS_STOP_GRACE_SECONDS: a long-running role asked to stop (SIGTERM, Ctrl-C) that has "
        "not finished its last step this long after the signal exits with status 3 (a broker that is gone "
        "can hold that step forever); keep it below your supervisor's kill timeout.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="RECSYS_LOG_LEVEL."
    )

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("kafka_extra", mode="before")
    @classmethod
    def _parse_extra(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            value = {str(k): str(v) for k, v in value.items()}
            reserved = sorted(set(value) & GUARANTEE_KEYS)
            if reserved:
                raise ValueError(f"RECSYS_KAFKA_EXTRA may not set {', '.join(reserved)}: the delivery guarantees "
                                 "rest on them (docs/ARCHITECTURE.md, \"Guarantees\"); the broker address and "
                                 "security have their own RECSYS_* settings")
        return value

    def require_bootstrap(self, role: str) -> str:
        """The bootstrap address, or a clear error telling the operator how to get one."""
        if not self.bootstrap_servers:
            raise MissingBootstrapError(role)
        return self.bootstrap_servers

    def masked(self) -> dict[str, Any]:
        """Effective settings for display: secrets shown as ``**********``, never in clear."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif name == "kafka_extra":
                value = {
                    k: ("**********" if _looks_secret(k) else v) for k, v in value.items()
                }
            out[name] = value
        return out

    def as_env(self) -> dict[str, str]:
        """These settings as the ``RECSYS_*`` variables that read back into equal settings, secrets in
        clear: what a child process is started with (never for display; ``masked`` is)."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = int(value)
            env[f"RECSYS_{name.upper()}"] = str(value)
        return env

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting; feeds the README table."""
        rows = []
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            rows.append((f"RECSYS_{name.upper()}", repr(default), field.description or ""))
        return rows


def _looks_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("password", "secret", "token", "key"))


def child_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """This process's environment with its ``RECSYS_*`` variables replaced by ``settings`` (and then
    ``overrides``): the one way a role, demo or benchmark starts another ``recsys-stream`` process, so
    a child cannot run on a setting its parent never had, nor miss one it had."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(settings.as_env())
    env.update(overrides)
    return env
