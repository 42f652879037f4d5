"""The command line as a whole: one vocabulary across subcommands, --debug everywhere."""

from __future__ import annotations

import argparse

from tsallis_rl.cli import build_parser
from tsallis_rl.config import default_of


def _leaf_parsers(parser: argparse.ArgumentParser, name: str = "tsallis-rl"):
    """(name, parser) of every subcommand that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for action in subs:
        for sub_name, sub in action.choices.items():
            yield from _leaf_parsers(sub, f"{name} {sub_name}")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_every_subcommand_speaks_one_vocabulary():
    leaves = dict(_leaf_parsers(build_parser()))
    assert {"tsallis-rl train", "tsallis-rl eval", "tsallis-rl data show"} <= set(leaves)
    for name, parser in leaves.items():
        opts = _options(parser)
        assert "--debug" in opts, f"{name} has no --debug"
        if "--regime" in opts:
            assert opts["--regime"].default in (None, default_of("regime")), name
        if "--path" in opts:
            assert "deprecated" in opts["--path"].help and "--data" in opts, name
        if "--task" in opts and not opts["--task"].required:
            assert opts["--task"].default in (None, default_of("task")), name
    for name in ("tsallis-rl train", "tsallis-rl eval", "tsallis-rl data show"):
        assert "--data" in _options(leaves[name]), name
    regimes = [n for n, p in leaves.items() if "--regime" in _options(p)]
    assert {"tsallis-rl export verl", "tsallis-rl data stats", "tsallis-rl eval"} <= set(regimes)
