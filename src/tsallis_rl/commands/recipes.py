"""`tsallis-rl recipes [NAME]`: list the packaged recipes, or print one (its YAML, with comments).

tsallis-rl recipes                 # name and one-line description of each
tsallis-rl recipes finqa-cold      # the recipe file: which values are the paper's, which ours
tsallis-rl train --recipe finqa-cold --data PATH/TO/finqa [--flag value ...]
"""

from __future__ import annotations

import argparse

from tsallis_rl.recipes import list_recipes, load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the packaged recipes (the paper's six settings, CPU smoke tests)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="print this recipe's file")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(load_recipe(args.name).yaml_text(), end="")
        return 0
    recipes = [load_recipe(name) for name in list_recipes()]
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        print(f"{r.name:<{width}}  {r.description}")
    return 0
