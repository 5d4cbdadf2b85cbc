"""Config files: the sectioned form, the flat form still read, and their one-line refusals.

A file is TOML (``.toml``) or JSON (``.json``) and holds one table per section of ``RunConfig``
(``[parallel] strategy = "dp2"``), each option under its flag's name spelled with ``_`` or ``-``.
``format`` (the record's version) and ``resolved`` (what a run derived, as run_config.json and
``--print-config`` write it) are not options: a run resolves again. The flat form, every option at
the top level, is what llama-train wrote and read before the sections; run_config.json of format 1
is that form plus its resolved values (``parallel``, ``init_source``).
"""

from __future__ import annotations

import difflib
import json
import sys
from typing import Any

from llama_train import toml_writer
from llama_train.errors import TrainError
from llama_train.options import CONFIG_FORMAT, OPTIONS, SECTION_OPTIONS, SECTIONS, plain

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

# Keys of a config file that are not options: the form's version, and the resolved record that
# run_config.json and --print-config add (recomputed by every run, so never read as options).
# Format 1 wrote its resolved values flat, as "parallel" and "init_source".
_RECORD_KEYS = ("format", "resolved")
_FORMAT1_RESOLVED = ("parallel", "init_source")


def read_config_file(path: str, say=None) -> dict[str, Any]:
    """The options a ``.toml`` or ``.json`` file sets, by flat name, coerced to their types.

    The sectioned form (one table per section) or the flat form (every option at the top level;
    run_config.json of format 1 too): ``say`` gets one line showing the flat
    form's sectioned equivalent. Keys may be spelled with ``-`` or ``_``. Refusals are one line:
    an unknown section or option (with the nearest valid name), an option in the wrong section, a
    value of the wrong type, one option under both spellings."""
    data = _load(path)
    fmt = data.get("format")
    if fmt is not None and fmt not in (1, CONFIG_FORMAT):
        raise TrainError(
            f"config file {path}: unknown format {fmt!r} (this llama-train reads 1 and "
            f"{CONFIG_FORMAT})"
        )
    body = {k: v for k, v in data.items() if k not in _RECORD_KEYS}
    if fmt == 1:
        body = {k: v for k, v in body.items() if k not in _FORMAT1_RESOLVED}
    # No option takes a table: a table at the top level makes the file sectioned.
    sectioned = fmt == CONFIG_FORMAT or any(isinstance(v, dict) for v in body.values())
    if not sectioned:
        values = _read_keys(path, body, section=None)
        if say is not None and values:
            say(f"note: {path} uses the flat form; the sectioned form is: {_one_line(values)}")
        return values
    values: dict[str, Any] = {}
    for key, table in body.items():
        if key not in SECTIONS:
            if key.replace("-", "_") in OPTIONS:
                home = OPTIONS[key.replace("-", "_")].section
                raise TrainError(
                    f"config file {path}: option {key!r} is outside any section; put it under [{home}]"
                )
            near = difflib.get_close_matches(key, list(SECTIONS), n=1)
            hint = f"; did you mean [{near[0]}]?" if near else f" (sections: {', '.join(SECTIONS)})"
            raise TrainError(f"config file {path}: unknown section [{key}]{hint}")
        if not isinstance(table, dict):
            raise TrainError(
                f"config file {path}: [{key}] must be a table of options, got {table!r}"
            )
        values.update(_read_keys(path, table, section=key))
    return values


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise TrainError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".toml"):
            data = tomllib.loads(raw.decode("utf-8"))
        elif path.endswith(".json"):
            data = json.loads(raw)
        else:
            raise TrainError(f"config file {path} must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainError(f"config file {path} is not valid: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TrainError(f"config file {path} must hold a table of options")
    return data


def _read_keys(path: str, table: dict[str, Any], section: str | None) -> dict[str, Any]:
    """One section's keys (or the flat form's, ``section`` None) by flat name, coerced."""
    where = f"config file {path}"
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # flat name -> the key that set it
    for key, value in table.items():
        name = key.replace("-", "_")
        spec = OPTIONS.get(name)
        if spec is None:
            raise TrainError(f"{where}: {_unknown(key, section)}")
        if section is not None and spec.section != section:
            raise TrainError(
                f"{where}: option {key!r} belongs in [{spec.section}], not [{section}]"
            )
        if name in spelled:
            raise TrainError(
                f"{where}: {spelled[name]!r} and {key!r} are the same option ({spec.flag}); keep one"
            )
        spelled[name] = key
        if value is None:  # JSON null: unset
            continue
        label = f"[{section}] {key}" if section is not None else key
        out[name] = spec.coerce(value, f"{where}: {label}")
    return out


def _unknown(key: str, section: str | None) -> str:
    name = key.replace("-", "_")
    if section is None:
        return f"unknown option {key!r}{_nearest(name, OPTIONS)}"
    here = SECTION_OPTIONS[section]
    near = difflib.get_close_matches(name, here, n=1)
    if near:
        return f"unknown option {key!r} in [{section}]; did you mean {near[0]!r}?"
    near = difflib.get_close_matches(name, list(OPTIONS), n=1)
    if near:
        return (
            f"unknown option {key!r} in [{section}]; did you mean {near[0]!r} "
            f"(in [{OPTIONS[near[0]].section}])?"
        )
    return f"unknown option {key!r} in [{section}] (it holds {', '.join(here)})"


def _nearest(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _one_line(values: dict[str, Any]) -> str:
    tables: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        tables.setdefault(OPTIONS[name].section, {})[name] = plain(value)
    ordered = {s: tables[s] for s in SECTIONS if s in tables}
    return " ".join(line for line in toml_writer.dumps(ordered).splitlines() if line)
