"""Tasks: examples, warm/cold prompts, gold answers and matching, behind `get_task(name)`.

Importing this package registers the built-in tasks (each module registers itself).
"""

import importlib
import pkgutil

from tsallis_rl.tasks.base import (
    REGIMES,
    DataError,
    Example,
    Task,
    format_for_model,
    get_task,
    list_tasks,
    register_task,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

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
