"""Tasks: examples, warm/cold prompts, gold answers and matching, behind `get_task(name)`.

Importing this package registers the built-in tasks (each module registers itself with
`base.register_task`); `get_task` and `list_tasks` look names up in that registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import yaml

from tsallis_rl.errors import ConfigError, DataError, UserError
from tsallis_rl.tasks.base import (
    _TASKS,
    REGIMES,
    Example,
    Task,
    format_for_model,
    register_task,
)
from tsallis_rl.tasks.noise import take_noise_option, with_noise

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def get_task(name: str, **options: Any) -> Task:
    """The task registered under `name`; "rg:<spec>" goes to the reasoning-gym factory.

    Every task takes the `noise=EPS` option (in the name or in `options`): its training answers are
    corrupted as `tasks.noise` says (checked here, before anything is built).
    """
    name, eps = take_noise_option(name, options)
    task = _build_task(name, **options)
    return task if eps is None else with_noise(task, eps)


def _build_task(name: str, **options: Any) -> Task:
    key, _, spec = name.partition(":")
    if spec and f"{key}:" in _TASKS:
        return _TASKS[f"{key}:"](spec, **options)
    base, qmark, query = name.partition("?")
    if qmark and base in _TASKS:  # "chainsum?dial=3&num_operands=5": options in the name
        try:
            return _TASKS[base](**{**_name_options(name, query), **options})
        except UserError:
            raise
        except (TypeError, ValueError) as exc:  # an option the task does not take, or a bad value
            raise ConfigError(f"task {name!r}: {exc}") from None
    if name not in _TASKS:
        known = ", ".join(sorted(k + ("<name>" if k.endswith(":") else "") for k in _TASKS))
        raise ConfigError(f"unknown task {name!r}; known: {known}")
    return _TASKS[name](**options)


def _name_options(name: str, query: str) -> dict[str, Any]:
    """ "k=v&k2=v2" -> {"k": v, ...} with YAML scalars (3 -> int, 0.5 -> float, else str)."""
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"task {name!r}: bad option {part!r}; expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def list_tasks() -> list[str]:
    """Names of the registered tasks ("rg:" takes a reasoning-gym spec after it)."""
    return sorted(_TASKS)


__all__ = [
    "REGIMES",
    "DataError",
    "Example",
    "Task",
    "format_for_model",
    "get_task",
    "list_tasks",
    "register_task",
]
