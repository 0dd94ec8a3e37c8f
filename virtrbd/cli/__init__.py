"""The ``virtrbd`` command: thin subcommands over the public API."""

from .main import main

__all__ = ["main"]
