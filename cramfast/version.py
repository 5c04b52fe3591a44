"""The package's version: recorded in every saved result and sweep row; pyproject.toml reads it."""
__version__ = "0.1.0"
