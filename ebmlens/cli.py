"""The ``ebmlens`` command line: a thin shell over the Python API.

Each subcommand is a ``click`` command in ``ebmlens/_cli/<module>.py``; :data:`COMMANDS` lists them and
:data:`main` imports one only when it is run or listed (``ebmlens --help`` loads no torch). Errors that
users can fix become one-line messages and exit code 2, never a traceback
(:func:`ebmlens._cli.friendly_errors`).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from . import __version__
from ._cli import friendly_errors, parse_number

__all__ = ["COMMANDS", "main", "friendly_errors", "parse_number"]

#: command name -> ``(module under ebmlens._cli, the click command in it)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("sample", "sample_cmd"),
    "merge": ("merge", "merge_cmd"),
    "stats": ("stats", "stats_cmd"),
    "energy": ("energy", "energy_cmd"),
    "ood": ("ood", "ood_cmd"),
    "calibration": ("calibration", "calibration_cmd"),
    "counterfactual": ("counterfactual", "counterfactual_cmd"),
    "accuracy": ("accuracy", "accuracy_cmd"),
    "evaluate": ("evaluate", "evaluate_cmd"),
    "models": ("models", "models_cmd"),
    "train": ("train", "train_cmd"),
}


class _Commands(click.Group):
    """A group whose commands are the entries of :data:`COMMANDS`, each imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"ebmlens._cli.{module}"), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"ebmlens._cli.{module}.{attr} is not a click command")
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ebmlens")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ebmlens: robust classifiers as energy-based models.

    Sample images from a classifier, measure its energies on natural and adversarial inputs,
    evaluate samples (IS/FID/KID), and train small robust models. Everything runs offline.
    """
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
