"""A TOML writer for the values a run's configuration holds; ``tomllib`` reads what it writes back.

Python's ``tomllib`` only reads. This writes the subset a configuration needs: strings, integers,
floats (``repr``, the shortest text that reads back as the same float, so a learning rate survives
the round trip bit for bit), booleans, arrays of those, and tables (nested ones as ``[a.b]``).
``None`` has no TOML form: a key whose value is None is left out, so reading the file back gives
the option's default, which is None for every option that can be unset.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dumps(document: dict[str, Any], header: str = "") -> str:
    """``document`` as TOML: its plain keys first, then one table per dict value. ``header``: comment
    lines put before everything (each prefixed with ``#``)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _table(document, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    plain = {k: v for k, v in table.items() if v is not None and not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (plain or not tables):
        lines += ["", "[" + ".".join(_key(p) for p in path) + "]"]
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # '3e-05', '0.9', '1e+20', '1234.0': each a TOML float
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        if any(v is None or isinstance(v, dict) for v in value):
            raise TypeError(f"no TOML form here for an array holding {value!r}")
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
