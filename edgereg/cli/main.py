"""The `edgereg` command: wires sub-commands; each lives in its own module under edgereg/cli/.

A command module defines ``add_parser(subparsers)`` (``edgereg.cli.common`` holds the parser
builder and the arguments several commands share) and ``run(args) -> int`` and imports heavy
libraries inside ``run`` so that ``edgereg --help`` stays fast. Errors that are the user's to fix
(:class:`~edgereg.errors.EdgeregError`) print one line and exit with the error's code (2 by
default). The machine's refusals are the user's to fix too and print one line: an ``OSError``
(permissions, a full disk: exit 1 for a full disk, else 2), ``MemoryError`` (exit 1), and a closed
stdout (``| head``: quiet, exit 141). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgereg import __version__
from edgereg.errors import FULL_ERRNOS, EdgeregError, did_you_mean, os_error_reason

COMMANDS = ("info", "infer", "serve", "bench", "synth", "train", "lr_find", "models", "export", "eval", "calibrate",
            "validate", "demo")

EPILOG = """examples:
  edgereg synth assay data/assay --n 2000
  edgereg train data/assay --out runs/assay
  edgereg export runs/assay --int8
  edgereg infer runs/assay/model.int8.onnx photos/ --out preds.csv
  edgereg infer model.onnx --camera 0 --jsonl
  edgereg serve model.onnx --camera 0
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean on mistyped options and commands, and exit code 2."""

    def error(self, message: str):
        hint = ""
        if "unrecognized arguments:" in message:
            word = message.split("unrecognized arguments:")[1].split()[0]
            options = [s for a in self._actions for s in a.option_strings]
            for sub in self._subparsers._group_actions if self._subparsers else []:
                for choice in getattr(sub, "choices", {}).values():
                    options += [s for a in choice._actions for s in a.option_strings]
            hint = did_you_mean(word.split("=")[0], options)
        elif "invalid choice:" in message:
            word = message.split("invalid choice:")[1].split("'")[1]
            hint = did_you_mean(word, [c.replace("_", "-") for c in COMMANDS])
        self.exit(2, f"edgereg: error: {message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgereg",
        description="Train, export and run compact image regressors.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgereg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"edgereg.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except EdgeregError as exc:
        print(f"edgereg: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgereg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return stdout_closed()
    except MemoryError:
        print("edgereg: error: out of memory; use smaller inputs or batches (--batch), or a machine with more "
              "memory", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine's refusal (disk full, permissions, I/O): the user's to fix
        print(f"edgereg: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1 if exc.errno in FULL_ERRNOS else 2


def one_line(text: str) -> str:
    """Errors are printed on one line: later lines (a library's detail) are joined with ' / '."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines) if lines else "failed"


def describe_os_error(exc: OSError) -> str:
    """``cannot write 'x/run.json': no space left on device`` from any OSError."""
    where = f" '{exc.filename}'" if exc.filename else ""
    verb = "cannot access" if where else "system error"
    return f"{verb}{where}: {os_error_reason(exc)}; check the path, its permissions and the free space"


def stdout_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly with 141, like a tool killed by SIGPIPE."""
    import os

    try:  # Python's own flush at exit goes nowhere instead of failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
