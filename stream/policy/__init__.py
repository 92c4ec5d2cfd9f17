"""Policy versions on Kafka: chunked, checksummed, signed and assembled back; the publisher and the subscriber.

Shared by the learner, the scorer and the CLI: imports ops, kafka, the contracts and `models/`; never a role.
"""
