"""One module per ``ebmlens`` subcommand, each defining a ``click`` command; :mod:`ebmlens.cli` lists them
(:data:`ebmlens.cli.COMMANDS`) and loads one when it is asked for. The modules here never import
:mod:`ebmlens.cli`: what they share lives here (errors, numbers) and in :mod:`ebmlens._cli._common`
(options)."""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any, Callable, TypeVar, cast

import click

__all__ = ["UsageFailure", "friendly_errors", "parse_number"]

F = TypeVar("F", bound=Callable[..., Any])


class UsageFailure(click.ClickException):
    """A user's mistake: ``error: <one line>`` on stderr and exit code 2, no usage block."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def friendly_errors(fn: F) -> F:
    """Turn the library's teaching errors (``ValueError``, ``TypeError``, ``FileNotFoundError``,
    ``ImportError``, ``OSError``, ``KeyError`` from registries) into ``error: ...`` + exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except (ValueError, TypeError, FileNotFoundError, ImportError, KeyError, OSError) as e:
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise UsageFailure(" ".join(msg.split()) or type(e).__name__) from None

    return cast(F, wrapper)


def parse_number(text: str | float | None) -> float | None:
    """``"8/255"``, ``"0.5"`` -> float.

    >>> parse_number("8/255") == 8 / 255, parse_number(None)
    (True, None)
    """
    if text is None or isinstance(text, (int, float)):
        return text
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"cannot read number {text!r}; write e.g. 0.5 or 8/255") from None
