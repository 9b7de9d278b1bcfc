"""The ``hark`` command."""

from media.cli.main import main

__all__ = ["main"]
