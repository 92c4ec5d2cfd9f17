"""What operators run and watch: role lifecycle and stop deadlines, /metrics, memory and allocator controls, dead-letter replay.

Imports kafka and the contracts; the roles and the CLI import it, never the other way.
"""
