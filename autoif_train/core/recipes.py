"""The one recipe loader of every command: a YAML file whose keys are dataclass field names, plus `--field value`.

    autoif <command> --config RECIPE.yaml [--field value ...]
    autoif <command> RECIPE.yaml [--field value ...]          (a positional recipe)
    autoif <command> --config=RECIPE.yaml --field=value       (`=` forms; kebab-case `--learning-rate` works too)

Flags override the YAML. Every key is checked before anything runs: an unknown key is named with the closest field
(`did you mean`), and a value of the wrong type names the file, the line of the key and the expected type
(`r.yaml:4: field 'learning_rate': expected float, got 'abc'`). A boolean flag may stand alone (`--bf16`) or take a
value (`--bf16 false`); `--no_<field>` sets it false. A YAML `env:` mapping is exported as environment variables.

Training recipes keep TRL's configs: the values are converted here, then handed to TRL's `HfArgumentParser` /
`TrlParser` (`parse_dict`), which builds `SFTConfig` / `DPOConfig` / `ModelConfig` as TRL does.
Not checked here: the meaning of values (each dataclass's `__post_init__` does that; its `RecipeError` is re-raised
with the file name).

Commands whose settings are a few flags and no recipe (`plan`, `verify`, `models`, `bundle`) parse them with
`ArgumentParser`, argparse's parser whose errors are `RecipeError`s, so they too are reported as one line, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoif_train.core.errors import RecipeError

RECIPE_SUFFIXES = (".yaml", ".yml")
_MISSING = object()


@dataclass
class Recipe:
    """A recipe file's mapping and where each top-level key is, plus the command-line overrides (strings)."""

    path: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # key -> str, list[str] or True (a bare flag)
    help: bool = False
    help_all: bool = False

    def where(self, key: str) -> tuple[str, int | None]:
        if key in self.overrides:
            return "command line", None
        return (self.path or "command line"), self.lines.get(key)

    def error(self, key: str | None, message: str) -> RecipeError:
        path, line = self.where(key) if key else (self.path or "command line", None)
        return RecipeError(path, line, key, message)


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose bad flags raise `RecipeError` (one line under `run_command`, exit 2) instead
    of printing the usage and exiting; `--help` still prints and exits 0."""

    def error(self, message: str):
        raise RecipeError(None, None, None, message)


def positive(kind: type):
    """An argparse `type=` for a number of `kind` (int or float) that must be > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def read_recipe(path: str | os.PathLike) -> Recipe:
    """Load a recipe YAML mapping with the line of each top-level key; a missing file, bad YAML or a non-mapping is
    a `RecipeError` naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise RecipeError(path, None, None, "recipe file not found")
    text = Path(path).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(path, mark.line + 1 if mark else None, None, f"not valid YAML: {problem}") from err
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(path, None, None, "a recipe must be a YAML mapping of field names to values")
    lines = {}
    if isinstance(node, yaml.MappingNode):
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return Recipe(path=path, values=data, lines=lines)


def split_argv(argv: list[str], prog: str = "autoif") -> Recipe:
    """`--config PATH` / `--config=PATH` / a leading positional `*.yaml`, and the `--field value` overrides.

    Flag names are normalized (`--learning-rate` -> `learning_rate`). A flag followed by several values collects
    them as a list; a flag followed by none is `True`."""
    argv = list(argv)
    config = None
    overrides: dict[str, Any] = {}
    help_, help_all = False, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            help_ = True
            i += 1
            continue
        if arg == "--help-all":
            help_all = True
            i += 1
            continue
        if not arg.startswith("--"):
            if config is None and arg.endswith(RECIPE_SUFFIXES):
                config = arg
                i += 1
                continue
            raise RecipeError(None, None, None, f"unexpected argument {arg!r} (flags are --field value)")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if not name:
            raise RecipeError(None, None, None, f"unexpected argument {arg!r}")
        if eq:
            values = [value]
            i += 1
        else:
            j = i + 1
            while j < len(argv) and not (argv[j].startswith("--") and len(argv[j]) > 2):
                if j > i + 1 and config is None and argv[j].endswith(RECIPE_SUFFIXES) and os.path.isfile(argv[j]):
                    break  # `--num_rounds 2 recipe.yaml`: the recipe after a flag's value
                j += 1
            values = argv[i + 1 : j]
            i = j
        if name == "config":
            if len(values) != 1 or not values[0]:
                raise RecipeError(None, None, None, "--config needs one recipe file: --config RECIPE.yaml")
            config = values[0]
            continue
        value = True if not values else values[0] if len(values) == 1 else values
        if name in overrides:  # a repeated flag (`--model a --model b`) collects a list
            before = overrides[name] if isinstance(overrides[name], list) else [overrides[name]]
            value = before + (value if isinstance(value, list) else [value])
        overrides[name] = value
    recipe = read_recipe(config) if config else Recipe()
    recipe.overrides, recipe.help, recipe.help_all = overrides, help_, help_all
    return recipe


# ---------------------------------------------------------------- types


def _allowed(hint: Any) -> tuple[list[Any], bool]:
    """(the non-None members of a type hint, whether None is allowed)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return members, len(members) < len(typing.get_args(hint))
    return [hint], hint is type(None) or hint is Any


def _name(hint: Any) -> str:
    members, optional = _allowed(hint)
    names = []
    for m in members:
        origin = typing.get_origin(m)
        if origin is typing.Literal:
            names.append(" | ".join(repr(a) for a in typing.get_args(m)))
        else:
            names.append(getattr(origin or m, "__name__", str(m)))
    return " or ".join(names + (["null"] if optional else []))


def _convert_one(value: Any, hint: Any, from_cli: bool) -> Any:
    """`value` as `hint` (one member of a union), or `_MISSING` when it cannot be."""
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return value
    if origin is typing.Literal:
        options = typing.get_args(hint)
        if value in options:
            return value
        return next((o for o in options if from_cli and str(o) == value), _MISSING)
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        try:
            return origin(value).value if isinstance(value, str) else value if isinstance(value, origin) else _MISSING
        except ValueError:
            return _MISSING
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        return _MISSING
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads `1e-5` as a string; TrlParser accepts it as a float too
            except ValueError:
                return _MISSING
        return _MISSING
    if origin is str:
        return value if isinstance(value, str) else str(value) if isinstance(value, (int, float)) and not isinstance(
            value, bool) else _MISSING
    if origin in (list, tuple):
        if isinstance(value, str):  # one item may be given without brackets
            value = yaml.safe_load(value) if from_cli and value.startswith("[") else [value]
        if not isinstance(value, (list, tuple)):
            return _MISSING
        args = typing.get_args(hint)
        if not args:
            return list(value)
        items = [_convert(v, args[0], from_cli) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else list(items)
    if origin is dict:
        if from_cli and isinstance(value, str) and value.startswith("{"):
            value = yaml.safe_load(value)
        return value if isinstance(value, dict) else _MISSING
    if isinstance(origin, type):
        return value if isinstance(value, origin) else _MISSING
    return value  # a hint this loader does not understand: left to the dataclass


def _convert(value: Any, hint: Any, from_cli: bool = False) -> Any:
    members, optional = _allowed(hint)
    # a string stays a string where the hint allows one (`dict | str`: the dataclass parses it; `--report_to none`
    # stays "none"), as TRL's HfArgumentParser does
    if isinstance(value, str) and any((typing.get_origin(m) or m) is str for m in members):
        return value
    if value is None or (from_cli and isinstance(value, str) and value.lower() in ("none", "null") and optional):
        return None if optional or hint is Any else _MISSING
    for member in members:
        out = _convert_one(value, member, from_cli)
        if out is not _MISSING:
            return out
    return _MISSING


def field_hints(dataclass_types) -> dict[str, Any]:
    """Field name -> resolved type hint over all `dataclass_types` (the first class defining a name wins)."""
    hints: dict[str, Any] = {}
    for dc in dataclass_types:
        try:
            resolved = typing.get_type_hints(dc)
        except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to the raw annotations
            resolved = {}
        for f in dataclasses.fields(dc):
            if f.init and f.name not in hints:
                hints[f.name] = resolved.get(f.name, f.type if not isinstance(f.type, str) else Any)
    return hints


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(recipe: Recipe, dataclass_types, aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The recipe's values and overrides merged, each key known and each value converted to its field's type.

    `aliases` maps other accepted names to field names (e.g. `out` -> `output_dir`). Raises `RecipeError`."""
    hints = field_hints(dataclass_types)
    aliases = aliases or {}
    merged: dict[str, Any] = {}
    overridden = {aliases.get(k, k) for k in recipe.overrides}
    overridden |= {k[3:] for k in overridden if k.startswith("no_")}
    for source, from_cli in ((recipe.values, False), (recipe.overrides, True)):
        for key, value in source.items():
            if key == "env" and not from_cli:
                if not isinstance(value, dict):
                    raise recipe.error("env", "must be a mapping of environment variable names to values")
                os.environ.update({str(k): str(v) for k, v in value.items()})
                continue
            name = aliases.get(key, key)
            if not from_cli and name in overridden:
                continue  # the command line replaces this value (a bad one in the file is not an error then)
            if name not in hints and from_cli and name.startswith("no_") and name[3:] in hints and value is True:
                name, value = name[3:], False
            if name not in hints:
                raise recipe.error(key, "unknown key" + did_you_mean(name, list(hints) + list(aliases)))
            hint = hints[name]
            if from_cli and value is True and _allowed(hint)[0] != [bool] and bool not in _allowed(hint)[0]:
                raise recipe.error(key, f"needs a value ({_name(hint)})")
            converted = _convert(value, hint, from_cli)
            if converted is _MISSING:
                raise recipe.error(key, f"expected {_name(hint)}, got {value!r}")
            merged[name] = converted
    return merged


def build(recipe: Recipe, cls: type, aliases: dict[str, str] | None = None, extra: dict | None = None):
    """`cls(**values)` from the recipe (see `resolve`); a `RecipeError` from `__post_init__` gets the file name."""
    values = {**resolve(recipe, [cls], aliases), **(extra or {})}
    try:
        return cls(**values)
    except RecipeError as err:
        if err.path is None and err.line is None:
            raise RecipeError(recipe.path or "command line", None, err.field, err.message) from err
        raise


# ---------------------------------------------------------------- help


def field_help(dataclass_type, names: list[str] | None = None, indent: str = "  ") -> list[str]:
    """One line per field: `--name TYPE (default D)  help`."""
    hints = field_hints([dataclass_type])
    out = []
    for f in dataclasses.fields(dataclass_type):
        if not f.init or (names is not None and f.name not in names):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = (f.metadata.get("help") or "").split("\n")[0]
        out.append(f"{indent}--{f.name} {_name(hints[f.name])} (default {default!r})  {text}".rstrip())
    return out


def own_fields(dataclass_type) -> list[str]:
    """Names of the fields `dataclass_type` declares itself (new ones and those whose default it changes)."""
    return list(vars(dataclass_type).get("__annotations__", {}))
