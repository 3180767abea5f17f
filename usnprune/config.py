"""Typed configuration loaded from YAML.

Every configuration is a dataclass. :func:`from_dict` builds one from a mapping and rejects
unknown keys (naming them and the allowed ones) and values of the wrong type; range checks
live in each dataclass's ``check`` method and raise :class:`ConfigError` naming the key and
the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from usnprune.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning every way it can fail into one ConfigError line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert, e.g. int -> float) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf / .nan in YAML: no setting means that
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(allowed: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in data.items():
        factory = fields[name].default_factory
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]) and factory is not dataclasses.MISSING:
            # a partial nested section updates this field's own default (e.g. prune's optim:
            # constant, no warm-up), not the nested class's defaults: one default per setting
            value = _merged(_init_values(factory()), value)
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(where)
    return obj


def _init_values(obj: Any) -> dict:
    """A dataclass's settable fields as a plain dict (nested dataclasses too)."""
    return {f.name: _init_values(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v
            for f in dataclasses.fields(obj) if f.init}


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(obj: Any) -> Any:
    """The plain-data (YAML/JSON-ready) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def embedded(cls: type[T], data: Any, where: str, set_here: dict[str, Any]) -> T:
    """A stage's own configuration inside a larger one (an experiment section): ``data``
    may hold every key of ``cls`` except those the container sets itself (``set_here``, the
    values used until it knows them), which are refused naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    taken = sorted(set(map(str, data)) & set(set_here))
    if taken:
        raise ConfigError(f"{where}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by the experiment; "
                          f"remove {'it' if len(taken) == 1 else 'them'}")
    return from_dict(cls, {**data, **set_here}, where)


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: command-line defaults come from
    here, so every setting has one default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def require(ok: bool, where: str, message: str) -> None:
    """Raise ConfigError('where: message') unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {message}")
