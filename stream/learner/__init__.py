"""The learner role: follows experiences, drives the agent of `models/`, gates and publishes policy versions.

A role package: imports what roles share (policy, replay, items), ops, kafka and the contracts; never another role.
"""
