"""Recipes: named, packaged training setups (YAML data), loaded by `tsallis-rl train --recipe NAME`.

Each `<name>.yaml` here holds `description`, `options` (TrainConfig fields) and
`not_given_by_paper` (the option keys that are this project's choices, not the paper's). The paper's
six settings are `{finqa,hotpotqa,musique}-{cold,warm}`; `*-smoke` shrink each to a CPU run.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from tsallis_rl.errors import RecipeError
from tsallis_rl.io import parse_yaml


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    options: dict[str, Any]
    not_given_by_paper: tuple[str, ...]
    source: str  # the packaged file it came from, for messages

    def yaml_text(self) -> str:
        return resources.files(__name__).joinpath(f"{self.name}.yaml").read_text(encoding="utf-8")


def list_recipes() -> list[str]:
    """Names of the packaged recipes, sorted."""
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".yaml")
    )


def load_recipe(name: str) -> Recipe:
    """The named recipe, checked as data: an `options` mapping, `not_given_by_paper` a subset of
    its keys. Whether the options are valid TrainConfig fields `config.recipe_options` checks."""
    known = list_recipes()
    if name not in known:
        raise RecipeError(f"recipe {name!r} does not exist; known: {', '.join(known)}")
    source = f"recipe {name} (tsallis_rl/recipes/{name}.yaml)"
    data = parse_yaml(resources.files(__name__).joinpath(f"{name}.yaml").read_text("utf-8"), source)
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise RecipeError(f"{source}: needs a mapping with an `options` mapping")
    options = dict(data["options"])
    not_given = tuple(data.get("not_given_by_paper") or ())
    for key in not_given:
        if key not in options:
            raise RecipeError(f"{source}: not_given_by_paper names {key!r}, which it does not set")
    return Recipe(name, str(data.get("description", "")), options, not_given, source)
