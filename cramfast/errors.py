"""One exception type for bad input: the CLI prints its message on one line and exits 2."""


class CramfastError(ValueError):
    """Bad input or an unusable model: the message says what and why."""
