"""`tsallis-rl` command line: one subcommand per module in `tsallis_rl.commands`.

Each module there defines `register(subparsers)` (adds its parser and sets `func`), so a new
subcommand is a new file, never an edit here. Run `tsallis-rl --help` for the list.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from tsallis_rl import __version__, commands


class UserError(Exception):
    """An error in what the user asked for (bad flag, bad file): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"tsallis-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
