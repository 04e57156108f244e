"""One decorator turns library errors into one ``error: ...`` line on stderr and exit code 1."""

from __future__ import annotations

import functools

import typer

from alseg.errors import AlsegError
from alseg.commands._console import err


def cli_errors(fn):
    @functools.wraps(fn)  # Typer reads the options from the wrapped signature
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AlsegError as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("error: interrupted; partial outputs were not renamed into place", markup=False)
            raise typer.Exit(130) from None

    return wrapper
