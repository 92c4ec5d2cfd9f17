"""The synthetic outside world (users, items, clicks, drift) shared by demo, tests and benchmarks."""
