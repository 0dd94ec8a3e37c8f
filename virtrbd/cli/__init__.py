"""The ``virtrbd`` command: thin subcommands over the public API."""

from .main import main, run

__all__ = ["main", "run"]
