"""The one reader of every file-based task: JSON Lines or a JSON array, with line numbers, and
checked field access. Bad input raises `DataError` naming the file, line and field.

    for line, rec in iter_records(path):          # (line, record) or (line, DataError) in JSONL
        question = get_field(rec, "question", str, path, line, nonempty=True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tsallis_rl.errors import DataError


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) for every record of a JSON Lines file or a JSON array file.

    The one reader of every file-based task. The text is UTF-8 (a leading BOM is accepted); a
    file that is not names the line of the first bad byte. The format is sniffed from the first
    non-blank character: `[` = one JSON array (each item's line is where the item starts),
    anything else = JSON Lines, split on "\\n" only ("\\r\\n" tolerated; U+2028, U+2029 and U+0085
    are legal inside JSON strings and do not end a line), blank lines skipped. `NaN`, `Infinity`
    and numbers that overflow to infinity are not JSON and are rejected. Bad JSON raises
    DataError with its line; in JSON Lines a bad line is yielded as a DataError instance (so that
    callers can skip it), in an array the whole file is unusable and it is raised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = _read_utf8(path)
    start = len(text) - len(text.lstrip())
    if start < len(text) and text[start] == "[":
        yield from _iter_array(path, text, start)
        return
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            yield lineno, _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            yield lineno, DataError(path, lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})")
        except _NotFinite as exc:
            yield lineno, DataError(path, lineno, None, f"bad JSON: {exc}")


class _NotFinite(ValueError):
    """A NaN / Infinity constant or an overflowing number (Python's json accepts both)."""


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON value (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"number {text} overflows to infinity")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, optional BOM); DataError naming the line of a non-UTF-8 byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            path, line, None, f"not UTF-8 text (byte 0x{bad} at column {column}; save it as UTF-8)"
        ) from None


def _iter_array(path: Path, text: str, start: int) -> Iterator[tuple[int, Any]]:
    decoder = _DECODER
    pos, line, counted = start + 1, 1, 0

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    pos = skip_ws(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, exc.lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})"
            ) from None
        except _NotFinite as exc:
            raise DataError(path, line_at(pos), None, f"bad JSON: {exc}") from None
        yield line_at(pos), item
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if text[pos + 1 :].strip():
                raise DataError(path, line_at(pos), None, "bad JSON: extra data after the array")
            return
        raise DataError(path, line_at(min(pos, len(text))), None, "bad JSON: expected ',' or ']'")


def get_field(
    rec: Any,
    name: str,
    types: type | tuple[type, ...],
    path: str | Path,
    line: int | None,
    *,
    nonempty: bool = False,
    default: Any = ...,
) -> Any:
    """`rec[name]`, checked: present (unless a default is given), of `types`, non-empty if asked.

    Dotted names ("qa.question") walk into nested objects. Raises DataError naming the field.
    """
    if not isinstance(rec, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(rec).__name__}")
    cur: Any = rec
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            if default is not ...:
                return default
            raise DataError(path, line, name, "missing")
        cur = cur[part]
    if isinstance(cur, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DataError(path, line, name, "expected " + _type_names(types) + ", got bool")
    if not isinstance(cur, types):
        raise DataError(
            path, line, name, f"expected {_type_names(types)}, got {type(cur).__name__}"
        )
    if nonempty and (len(cur) == 0 if not isinstance(cur, str) else not cur.strip()):
        raise DataError(path, line, name, "empty")
    return cur


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    names = {
        str: "string",
        int: "integer",
        float: "number",
        list: "list",
        dict: "object",
        bool: "bool",
    }
    return " or ".join(names.get(t, t.__name__) for t in ts)
