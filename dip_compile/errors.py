"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""


class DipError(Exception):
    """A problem with the user's input or environment (not a bug): bad file, wrong size, existing output."""
