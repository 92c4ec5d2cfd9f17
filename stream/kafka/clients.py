"""librdkafka client configuration built from ``Settings``, in one place.

Every producer, consumer and admin client of every role goes through here, so
security settings and safe defaults (idempotence, manual offset storage, a short
group session timeout that keeps group joins quick on the embedded broker) cannot
be forgotten by one role.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from stream.config import Settings


def base_config(settings: Settings, role: str) -> dict[str, Any]:
    """Connection and security settings shared by every client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.require_bootstrap(role),
        "client.id": f"recsys-stream-{role}",
        "security.protocol": settings.security_protocol,
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
    }
    conf.update({k: v for k, v in optional.items() if v is not None})
    if settings.sasl_password is not None:
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.ssl_key_password is not None:
        conf["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
    conf.update(settings.kafka_extra)
    return conf


#: ``linger.ms`` for a producer whose records no one is waiting on (logged impressions, an app's clicks):
#: a broker stores a batch of one badly (Tansu: about a kilobyte beyond its bytes), and at a few events
#: per partition per second only a linger this long puts many records in a batch.
LOGGING_LINGER_MS = 250


def producer_config(settings: Settings, role: str, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all producer: a retried send never duplicates a message."""
    conf = base_config(settings, role)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # zstd by default: a batch of the join's experiences shrinks to ~0.13 of its bytes (lz4: ~0.21),
            # at a CPU cost that is noise at these rates; the embedded broker keeps batches as they came.
            "compression.type": settings.compression,
            # The Java client's partitioner (murmur2 of the key): a click keyed by user_id from any
            # Java or Kafka Streams producer lands on the partition of that user's impressions.
            "partitioner": "murmur2_random",
            "message.max.bytes": settings.max_message_bytes,
            # A delivery report per acknowledged message cost ~4 us each in Python (a Message
            # object with a copy of the value): only failures are reported, successes are
            # counted when a flush finds nothing outstanding (``EventProducer``).
            "delivery.report.only.error": True,
        }
    )
    conf.update(overrides)
    conf.update(settings.kafka_extra)      # an operator's tuning wins (the guarantees' keys are refused)
    return conf


#: How long a fetch may wait for data. Kafka answers as soon as there is data, so there this only
#: spaces out idle polls. The embedded Tansu answers only what it has read when the wait runs out,
#: and listing a partition's batches takes longer as they pile up (1.3 ms per 1,000 on this
#: machine by `python -m bench.broker_listing`, several times that on a loaded one): with 20 ms
#: the learner's and the census's fetches came back empty after ~30 minutes at the demo's load
#: and the loop fell behind; with 100 ms the same soak kept click -> live p99 under 2.5 s and
#: the broker at 0.42 cores instead of 0.60 (docs/ARCHITECTURE.md, "Brokers"). Where data is waiting, a fetch returns at once either way.
FETCH_WAIT_MS = 100


def consumer_config(settings: Settings, role: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """At-least-once consumer: offsets are stored by the caller only after its effects are durable."""
    conf = base_config(settings, role)
    conf.update(
        {
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            # Keeps the first group join fast on Tansu (docs/ARCHITECTURE.md, "Brokers").
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
    )
    conf.update(overrides)
    conf.update(settings.kafka_extra)
    return conf


def make_producer(settings: Settings, role: str, **overrides: Any) -> Producer:
    return Producer(producer_config(settings, role, **overrides))


def make_consumer(settings: Settings, role: str, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, role, group_id, **overrides))


def make_admin(settings: Settings, role: str = "admin") -> AdminClient:
    return AdminClient(base_config(settings, role))
