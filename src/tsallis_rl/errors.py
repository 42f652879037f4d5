"""User errors: every mistake a user can make (a bad flag, file, recipe, checkpoint or model).

`tsallis-rl` prints a `UserError` as one line and exits with status 2; any other exception is a
bug in this package and keeps its traceback. Raise the kind that names the thing at fault, at the
boundary where it is first seen (config, data loading, run directory), with the file, line or
field in the message.

`UserError` is a `ValueError`, so library callers (and tests) that guard a call with
`except ValueError` keep working; the CLI catches `UserError` alone, so a plain ValueError from
the core (a shape bug) is never mistaken for a user error.
"""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what and where (one line)."""


class ConfigError(UserError):
    """A bad option value (flag, YAML key, recipe option); names the field and where it came from."""


class RecipeError(ConfigError):
    """A recipe that does not exist or does not describe valid options (names the recipe file)."""


class DataError(UserError):
    """A data or log file that cannot be read as what it should be (names the file, line, field)."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, why: str):
        where = str(path) + (f", line {line}" if line is not None else "")
        what = f", field {field_name!r}" if field_name else ""
        super().__init__(f"{where}{what}: {why}")
        self.path, self.line, self.field, self.why = str(path), line, field_name, why


class CheckpointError(UserError):
    """A checkpoint that cannot be read (torn by a kill, truncated, corrupted), or none intact."""


class ModelError(UserError):
    """A model that cannot be found, loaded or fitted with saved weights (names the model)."""
