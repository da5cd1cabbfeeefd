"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""

from collections.abc import Iterable


class DipError(ValueError):
    """A problem with the user's input or environment (not a bug): bad file, wrong size, existing output.

    A ``ValueError`` subclass, so library callers can catch it as the bad value it is; only the CLI turns it into
    one line on stderr and exit code 2."""


def joined(items: Iterable[object], last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``: the choices a message lists (tasks, factors, specs)."""
    words = [str(i) for i in items]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"
