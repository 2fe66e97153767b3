"""Command-line flags generated from config dataclasses, so each setting is documented once.

A field ``frame_skip: int = 4`` with a docstring under it becomes ``--frame-skip N`` with that docstring
as help and the field's default. Integers accept readable counts (``10M``, ``2.5e6``, ``500k``), booleans
get ``--flag/--no-flag``, ``Literal`` types become choices. Values are checked by the dataclasses
themselves; their ``ValueError`` reaches the user as a one-line error naming the flag (``--max-frames``,
not the field ``max_frames``): :func:`dataclass_from_flags` rewrites the field names in the message.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

_COUNT_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def parse_count(text: str) -> int:
    """``"10M"`` -> 10_000_000, ``"2.5e6"`` -> 2_500_000, ``"500k"`` -> 500_000, ``"1_000"`` -> 1000."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    match = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)([kKmMgGbB]?)", cleaned)
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (examples: 500000, 500k, 10M, 2.5e6)")
    value = float(match.group(1)) * _COUNT_SUFFIXES.get(match.group(2).lower(), 1)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def format_count(value: float) -> str:
    """The readable form of a count: ``1234567`` -> ``"1.23M"`` (the inverse of :func:`parse_count`, rounded)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (``x: int = 1`` then ``\"\"\"doc\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


_UNIONS = (typing.Union, types.UnionType)
_CONVERTERS = {int: parse_count, float: float, str: str, Path: Path}
"""argparse types of the field types; other types are read as strings."""


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser | Any, cls: type, exclude: Iterable[str] = (),
                        title: str | None = None, default_text: Mapping[str, str] | None = None) -> None:
    """Add one flag per field of ``cls`` (defaults shown; the parsed value is None when not given).

    ``default_text`` replaces the shown default of fields whose real default is computed elsewhere
    (e.g. a run directory named after the agent).
    """
    default_text = default_text or {}
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        kind, default = hints[f.name], _default_of(f)
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin in _UNIONS and type(None) in args:  # Optional[X], X | None
            kind = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(kind), typing.get_args(kind)
        shown = default_text.get(f.name, default)
        help_text = docs.get(f.name, "") + (f" (default: {shown})" if shown is not None else "")
        options: dict[str, Any] = dict(dest=f"{cls.__name__}.{f.name}", default=None, help=help_text)
        if kind is bool:
            group.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **options)
        elif origin is typing.Literal:
            group.add_argument(flag_name(f.name), choices=list(args), **options)
        elif origin is tuple and args and Ellipsis not in args:  # tuple[float, float]: that many values
            group.add_argument(flag_name(f.name), type=_CONVERTERS.get(args[0], str), nargs=len(args),
                               metavar=f.name.upper(), **options)
        else:
            group.add_argument(flag_name(f.name), type=_CONVERTERS.get(kind, str), metavar=f.name.upper(), **options)


def given_settings(cls: type, args: argparse.Namespace, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given (those :func:`add_dataclass_flags` added), by field name."""
    given = {f.name: getattr(args, f"{cls.__name__}.{f.name}") for f in dataclasses.fields(cls)
             if f.name not in exclude and getattr(args, f"{cls.__name__}.{f.name}", None) is not None}
    return {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}


def dataclass_from_flags(cls: type, args: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
    """Build ``cls`` from the flags that were given, over ``base`` (or the defaults) and ``fixed`` values."""
    values = {**given_settings(cls, args), **fixed}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ValueError as error:
        flagged = [f.name for f in dataclasses.fields(cls) if hasattr(args, f"{cls.__name__}.{f.name}")]
        raise ValueError(with_flag_names(str(error), flagged)) from None


def with_flag_names(message: str, field_names: Iterable[str]) -> str:
    """``"max_episode_frames must be > 0"`` -> ``"--max-episode-frames must be > 0"``.

    Names with an underscore are replaced wherever they appear; one-word names (``lr``, ``frames``) only at
    the start of the message, where the config's validation puts the field it complains about.
    """
    for name in sorted(field_names, key=len, reverse=True):
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?!\w)", flag_name(name), message)
        elif re.match(rf"{re.escape(name)}(?!\w)", message):
            message = flag_name(name) + message[len(name):]
    return message


def differing_settings(configs: Sequence[Mapping[str, Any]], ignore: Iterable[tuple[str, str]] = (),
                       option_flags: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """The settings in which configs differ, in the JSON form of a config of dataclasses (``{group: {field:
    value}}``, with any top-level ``{field: value}`` as group ``""``): ``{"--encoder": ["small", "paper"]}``,
    one value per config (None where absent).

    This is the one comparison behind every rule that some settings may differ and others may not (resuming
    an RL or a supervised run, a sweep continuing its runs, plot groups). ``ignore`` holds ``(group, field)``
    pairs that may differ (e.g. ``("run", "seed")``, ``("", "preset")``). ``option_flags`` names the flag of
    groups of free-form options: ``{"task_options": "--task-option"}`` reports a differing ``bits`` there as
    ``--task-option bits``.
    """
    skip, option_flags = set(ignore), option_flags or {}
    flat = [_flatten_settings(config) for config in configs]
    keys = list(dict.fromkeys(key for settings in flat for key in settings))
    differences: dict[str, list[Any]] = {}
    for group, name in keys:
        if (group, name) in skip:
            continue
        values = [settings.get((group, name)) for settings in flat]
        if any(value != values[0] for value in values[1:]):
            flag = f"{option_flags[group]} {name}" if group in option_flags else flag_name(name)
            differences[flag] = values
    return differences


def describe_changes(differences: Mapping[str, Sequence[Any]]) -> list[str]:
    """``{"--lr": [1e-4, 2e-4]}`` (two configs, from :func:`differing_settings`) -> ``["--lr 0.0001 -> 0.0002"]``."""
    return [f"{flag} {values[0]} -> {values[1]}" for flag, values in differences.items()]


def _flatten_settings(config: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    settings: dict[tuple[str, str], Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            settings.update({(key, name): item for name, item in value.items()})
        else:
            settings[("", key)] = value
    return settings


def given_flags(cls: type, args: argparse.Namespace) -> list[str]:
    """The flags of ``cls`` that appear on the command line."""
    return [flag_name(f.name) for f in dataclasses.fields(cls)
            if getattr(args, f"{cls.__name__}.{f.name}", None) is not None]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def parse_key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``["d=64", "gated=False"]`` given as ``flag`` -> ``{"d": 64, "gated": False}`` (Python literals, else
    strings); a pair without ``=`` is a ``ValueError`` naming the flag."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def replace_typed(base: Any, changes: Mapping[str, Any], what: str) -> Any:
    """``dataclasses.replace(base, **changes)`` for values from the command line or a JSON file: unknown names
    and values of the wrong type are a one-line ``ValueError`` (``what`` names the thing, e.g. ``model ntm``);
    lists become tuples and whole numbers become floats where the field says so."""
    cls = type(base)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [key for key in changes if key not in names]
    if unknown:
        raise ValueError(f"{what} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in changes.items():
        ok, value = _as_type(value, hints[key])
        if not ok:
            raise ValueError(f"{what}: option {key} must be {_type_text(hints[key])}, got {value!r}")
        converted[key] = value
    return dataclasses.replace(base, **converted)


def _as_type(value: Any, kind: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits the type ``kind`` (after the conversions of :func:`replace_typed`), and the value."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in _UNIONS:
        for option in args:
            ok, converted = _as_type(value, option)
            if ok:
                return True, converted
        return False, value
    if kind is type(None):
        return value is None, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (Ellipsis not in args and len(value) != len(args)):
            return False, value
        items = [_as_type(item, args[0] if Ellipsis in args else option)
                 for item, option in zip(value, args if Ellipsis not in args else [args[0]] * len(value))]
        return all(ok for ok, _ in items), tuple(item for _, item in items)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) \
            if isinstance(value, (int, float)) else value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(kind, type):
        return isinstance(value, kind), value
    return True, value


def _type_text(kind: Any) -> str:
    return str(kind).replace("typing.", "").replace("NoneType", "None") if not isinstance(kind, type) else kind.__name__
