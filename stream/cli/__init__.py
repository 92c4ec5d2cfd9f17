"""The ``recsys-stream`` command line (``python -m stream``): one entry point, one module per command group."""

from stream.cli.app import cli, main

__all__ = ["cli", "main"]
