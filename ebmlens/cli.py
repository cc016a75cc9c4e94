"""The ``ebmlens`` command line: a thin shell over the Python API.

Subcommands live in ``ebmlens/_cli/<name>.py`` and are registered on :data:`main` at import.
Errors that users can fix (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``ImportError``,
``KeyError`` from registries) become one-line messages and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from fractions import Fraction

import click

from . import __version__

__all__ = ["main", "friendly_errors", "parse_number", "echo_err"]


class UsageFailure(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # one line, no usage block
        click.echo(f"error: {self.format_message()}", err=True)


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def friendly_errors(fn):
    """Turn the library's teaching errors into ``error: ...`` + exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except (ValueError, TypeError, FileNotFoundError, ImportError, KeyError, OSError) as e:
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise UsageFailure(" ".join(msg.split()) or type(e).__name__) from None

    return wrapper


def parse_number(text: str | float | None) -> float | None:
    """``"8/255"``, ``"0.5"`` -> float."""
    if text is None or isinstance(text, (int, float)):
        return text
    try:
        return float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"cannot read number {text!r}; write e.g. 0.5 or 8/255") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ebmlens")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ebmlens: robust classifiers as energy-based models.

    Sample images from a classifier, measure its energies on natural and adversarial inputs,
    evaluate samples (IS/FID/KID), and train small robust models. Everything runs offline.
    """
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    import importlib
    import pkgutil

    from . import _cli

    for mod in sorted(m.name for m in pkgutil.iter_modules(_cli.__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{_cli.__name__}.{mod}")


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
