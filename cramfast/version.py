"""The package's version: recorded in every saved result and sweep row; setup.py reads it."""
__version__ = "0.1.0"
