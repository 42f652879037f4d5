"""`tsallis-rl` command line: one subcommand per module in `tsallis_rl.commands`.

Each module there defines `register(subparsers)` (adds its parser and sets `func`), so a new
subcommand is a new file, never an edit here. Run `tsallis-rl --help` for the list.

Errors: a `tsallis_rl.errors.UserError` (or a missing / wrong-kind path) is printed as one line
and exits 2 (`--debug` shows its traceback); any other exception is a bug and keeps its traceback.
Ctrl-C prints one line (what was kept and how to continue: a command may set `on_interrupt(args)`
with `set_defaults`) and exits 130, the shell's status for SIGINT. A closed stdout (`| head`)
ends the command quietly, like any Unix tool.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import typing

from tsallis_rl import __version__, commands
from tsallis_rl.errors import UserError

# OSErrors that mean "the path you gave is wrong" (any other OSError is a fault, not a mistake)
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (status 2) instead of the whole usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tsallis-rl",
        description="Train reasoning LMs on the J_Q loss continuum (GARL, PAFT, GRPO).",
    )
    parser.add_argument("--version", action="version", version=f"tsallis-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is caught below
        return status
    except (UserError, *PATH_ERRORS) as exc:  # a user's mistake: one line, status 2
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever it holds
        print(f"tsallis-rl {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was written is whole (atomic writes); say so
        if getattr(args, "debug", False):
            raise
        hint = getattr(args, "on_interrupt", None)
        kept = hint(args) if hint else "nothing half-written is left behind"
        print(f"\ntsallis-rl {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of the closed pipe
    does not print a second BrokenPipeError at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by a non-file (tests): nothing to silence
        pass
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
