"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""


class DipError(ValueError):
    """A problem with the user's input or environment (not a bug): bad file, wrong size, existing output.

    A ``ValueError`` subclass, so library callers can catch it as the bad value it is; only the CLI turns it into
    one line on stderr and exit code 2."""
