"""Decoded JSON -> frozen dataclasses, checked against their type annotations.

One function reads every record of a manifest, so each field is checked the same way: its JSON
type (an int is not a bool, a float is finite), then its range where one is declared. The
first bad value raises a FieldError carrying its JSON path ("components.unet.models.fp32
.inputs[0].shape"), which the bundle reader turns into a one-line BundleError.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any


class FieldError(Exception):
    """A JSON value that does not fit the type or range its field declares."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"'{path}' {problem}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(tp: Any) -> str:
    """A type annotation in words, for messages."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "null" if tp is type(None) else str(tp))


def decode(tp: Any, value: Any, path: str, minimums: dict[str, float] | None = None) -> Any:
    """`value` as the annotation `tp` says (dataclasses, tuples, dicts, unions, scalars).

    `minimums` maps field names to the smallest value their numbers may take.
    """
    minimums = minimums or {}
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return decode(option, value, path, minimums)
            except FieldError as e:
                if e.path != path:  # the right kind, with a bad value inside: say that
                    raise
        raise FieldError(path, f"must be {_kind(tp)}, not {value!r:.60}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise FieldError(path, f"must be a list, not {value!r:.60}")
        args = typing.get_args(tp)
        if origin is tuple and args[-1] is not Ellipsis:  # fixed length: tuple[float, float]
            if len(value) != len(args):
                raise FieldError(path, f"must be a list of {len(args)}, not {value!r:.60}")
            return tuple(
                decode(a, v, f"{path}[{i}]", minimums)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        items = [decode(args[0], v, f"{path}[{i}]", minimums) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"must be an object, not {value!r:.60}")
        item = typing.get_args(tp)[1]
        return {k: decode(item, v, _join(path, k), minimums) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _record(tp, value, path, minimums)
    return _scalar(tp, value, path, minimums.get(path.rsplit(".", 1)[-1]))


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    """A dataclass's resolved annotations (resolving them is the slow part; once per class)."""
    return typing.get_type_hints(tp)


def _record(tp: Any, value: Any, path: str, minimums: dict[str, float]) -> Any:
    if not isinstance(value, dict):
        raise FieldError(path, f"must be an object, not {value!r:.60}")
    hints = _hints(tp)
    fields = {}
    for f in dataclasses.fields(tp):
        where = _join(path, f.name)
        if f.name in value:
            fields[f.name] = decode(hints[f.name], value[f.name], where, minimums)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FieldError(where, "is missing")
    return tp(**fields)


def _scalar(tp: Any, value: Any, path: str, minimum: float | None) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if tp not in ok:
        raise TypeError(f"typed_json cannot decode {tp}")  # a schema bug, not bad input
    if not ok[tp]:
        raise FieldError(path, f"must be {_kind(tp)}, not {value!r:.60}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise FieldError(path, f"must be a finite number, not {value}")
    if minimum is not None and tp in (int, float) and value < minimum:
        raise FieldError(path, f"must be at least {minimum:g}, not {value}")
    return value
