"""The command lines' shared parts (tools) and ``python -m cramfast compress|decode``."""
from cramfast.cli.compress import main

__all__ = ["main"]
