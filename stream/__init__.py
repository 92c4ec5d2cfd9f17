"""Everything that touches Kafka or the network: config, broker, topics, schemas, roles, CLI."""

__version__ = "0.1.0"
