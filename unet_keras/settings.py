"""Settings as frozen dataclasses: one place for each setting's type, default and help.

The machinery every stage's settings use: each field carries its help text (`setting`), and
a `Literal` type lists its choices, so the `unet-keras` flags, their `--help`, the checks
on values (from flags, config files or Python) and README's settings table are all made
from the fields. Each stage keeps its own settings beside it (`training.training_settings`,
`inference.inference_settings`, ...); what travels inside a model is `unet_keras.record`.
TF-free.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T", bound="Settings")


def setting(default: Any = dataclasses.MISSING, *, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text; `cli=False` keeps it off the command line,
    `positional=True` makes it a positional argument there."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of a settings class."""
    return typing.get_type_hints(cls)


def unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without `| None`, whether None is allowed)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        members = [k for k in typing.get_args(kind) if k is not type(None)]
        if len(members) == 1:
            return members[0], len(members) < len(typing.get_args(kind))
    return kind, False


def choices(kind: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal` type (or an optional one), else None."""
    kind, _ = unwrap_optional(kind)
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


class Settings:
    """Mixin for frozen settings dataclasses: checked values and a JSON round trip.

    Values are checked against their field's type as they arrive (a config file or a
    record from a server may hold anything); subclasses add their own rules in `check`.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _checked(type(self), field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Raises a ValueError naming the setting when a value breaks a rule of the class."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain JSON-compatible values."""
        return {f.name: _as_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Builds the settings from `to_dict` output, or part of it; unknown keys raise a
        ValueError. A nested section given in part keeps the rest of its default."""
        if not isinstance(values, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping of settings, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown setting(s) {unknown}; expected some of {sorted(fields)}"
            )
        missing = sorted(
            name
            for name, field in fields.items()
            if name not in values
            and field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"{cls.__name__}: missing setting(s) {missing}")
        values = dict(values)
        for name, value in values.items():
            default = fields[name].default
            if isinstance(default, Settings) and isinstance(value, dict):
                values[name] = type(default).from_dict({**default.to_dict(), **value})
        return cls(**values)


def _as_plain(value: Any) -> Any:
    """Turns tuples into lists and nested settings into dicts, so the result is plain JSON."""
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_as_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_plain(item) for key, item in value.items()}
    return value


def _checked(cls: type, name: str, value: Any) -> Any:
    """`value` converted to the field's type (lists to tuples, dicts to settings), or a
    ValueError that names `cls.name`, the expected type and the value."""
    kind, optional = unwrap_optional(field_types(cls)[name])
    if value is None and optional:
        return None
    where = f"{cls.__name__}.{name}"
    allowed = choices(kind)
    if allowed is not None:
        if value not in allowed:
            raise ValueError(f"{where} must be one of {allowed}, got {value!r}")
        return value
    try:
        return _converted(kind, value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def _converted(kind: Any, value: Any) -> Any:
    """`value` as `kind`: int, float, str, bool, dict, a settings class or a tuple of them."""
    if isinstance(kind, type) and issubclass(kind, Settings):
        if isinstance(value, (list, tuple)):
            return kind(*value)  # the fields in order, e.g. TileSizes (572, 388)
        return value if isinstance(value, kind) else kind.from_dict(value)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        items = typing.get_args(kind)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_converted(items[0], item) for item in value)
        if len(items) != len(value):
            raise TypeError(f"expected {len(items)} values, got {value!r}")
        return tuple(_converted(k, item) for k, item in zip(items, value, strict=True))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if kind in names and type(value) is not kind:
        raise TypeError(f"expected {names[kind]}, got {value!r}")
    if typing.get_origin(kind) is dict and not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {value!r}")
    return value


def at_least(settings: Settings, minimum: float, *names: str) -> None:
    """Raises unless every named setting is at least `minimum` (None passes)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")
