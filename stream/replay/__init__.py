"""The replay buffer: a durable SQLite store of experiences (recent window + reservoir) and the service that fills it.

Shared: the replay role runs `service`; the learner samples the `store`. Imports ops, kafka and the contracts only.
"""
