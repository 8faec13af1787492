"""What the subcommand parsers share: how a command registers, and arguments several commands
define word for word (``edgereg.cli.options`` holds the option *value* parsers).

Every ``add_parser(subparsers)`` of an ``edgereg.cli`` command module starts with
:func:`command_parser`; the helpers below add an argument with the same name, flags and help
text wherever it appears, so ``--help`` reads the same in every command.
"""

from __future__ import annotations

import argparse

STANDARDS_HELP = "a folder with labels.csv and photos of standards"
STRICT_HELP = "stop at the first bad row instead of skipping it"


def command_parser(subparsers, name: str, *, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of command ``name``: ``help`` is its line in ``edgereg --help``; ``description`` and
    ``epilog`` (examples) are printed as written (``RawDescriptionHelpFormatter``)."""
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_and_standards(parser: argparse.ArgumentParser, *, model_help: str) -> None:
    """The positional ``MODEL`` (an .onnx file) and ``STANDARDS`` (photos of reference standards)."""
    parser.add_argument("model", metavar="MODEL", help=model_help)
    parser.add_argument("standards", metavar="STANDARDS", help=STANDARDS_HELP)


def add_strict_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--strict``: a bad row of labels.csv stops the command instead of being skipped."""
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)
