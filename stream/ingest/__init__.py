"""Getting events in: JSON lines validated and produced (`ingest`), and other systems' logs mapped to our events (`import`).

A role package: imports what roles share (items, policy, replay), ops, kafka, and the contracts; never another role.
"""
