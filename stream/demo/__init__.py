"""The closed-loop demo and its foundation walkthrough: every role started as a process on one broker.

May import every layer below the CLI (the roles, what they share, operations, Kafka, contracts); nothing imports it but the CLI.
"""
