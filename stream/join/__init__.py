"""The reward join: impressions, clicks and purchases in, experiences out, exactly once across crashes.

A role package: `reward_join` is pure event-time logic; `processor`, `worker` and `state` put it on Kafka; `faust_engine`
is the alternative engine. Imports what roles share, ops, kafka and the contracts; never another role.
"""
