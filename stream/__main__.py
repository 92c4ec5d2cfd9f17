"""``python -m stream`` is the same as ``recsys-stream``."""

from stream.cli import main

main()
