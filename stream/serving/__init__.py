"""The scorer role: the scoring core, its HTTP layer, its Kafka transport, and the service that wires them.

A role package: imports what roles share (policy, items), ops, kafka, the contracts and `models/`; never another role.
"""
