"""How every command ends on a user's error: one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from ..errors import DipError


def fail(message: str) -> NoReturn:
    raise DipError(message)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a DipError into one line on stderr and exit code 2, for the CLI and typer's test runner alike."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DipError as exc:
            typer.echo(f"dipc: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("dipc: interrupted; nothing more was saved", err=True)
            raise typer.Exit(130) from None

    return wrapper
