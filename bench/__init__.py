"""Benchmarks that print JSON measured on this run."""
