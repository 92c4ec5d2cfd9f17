"""Kafka plumbing: clients with our defaults, the embedded broker, producers with delivery tracking, dead letters,
followers, offset-gap guards and client metrics.

Imports only the contracts (`stream.schemas`, `stream.config`); everything above may import it.
"""
