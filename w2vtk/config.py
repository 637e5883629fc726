"""Configs: nested dataclasses, read from YAML, overridden by `key=value` arguments, saved with each run.

A config file and its overrides are checked field by field: an unknown key, a value of the wrong type
or one out of range stops the run with a message that names the file, the key and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text

T = TypeVar("T")


class ConfigError(W2vtkError):
    """A config file or override is malformed."""


def positive(**kw) -> dict:
    """Field metadata: the value must be > 0."""
    return {"check": (lambda v: v > 0, "must be > 0"), **kw}


def non_negative(**kw) -> dict:
    return {"check": (lambda v: v >= 0, "must be >= 0"), **kw}


def probability(**kw) -> dict:
    return {"check": (lambda v: 0 <= v <= 1, "must be within [0, 1]"), **kw}


def one_of(*choices: Any) -> dict:
    return {"check": (lambda v: v in choices, f"must be one of {', '.join(map(str, choices))}")}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting ints to floats and lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
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
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp in (list, tuple):  # an unparameterised list: check the container only
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if not -2**63 <= value < 2**63:  # numpy and torch take 64-bit integers
            raise ConfigError(f"{where}: {value!r} is out of range (a 64-bit integer)")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from `data`, checking names, types and ranges; unset fields keep defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        sub = f"{where}.{key}"
        v = _coerce(value, hints[key], sub)
        check = fields[key].metadata.get("check")
        if check is not None and v is not None and not check[0](v):
            raise ConfigError(f"{sub}: {v!r} {check[1]}")
        kwargs[key] = v
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError, OverflowError, W2vtkError) as e:  # OverflowError: int(inf) in a list
        raise ConfigError(f"{where}: {e}") from None
    validate = getattr(obj, "check", None)
    if validate is not None:
        validate(where)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """`["optim.lr=1e-3", "model.dropout=0"]` -> nested dict; values parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected key=value, e.g. optim.lr=1e-4")
        key, raw = pair.split("=", 1)
        if not key or any(not part.isidentifier() for part in key.split(".")):
            raise ConfigError(f"override {pair!r}: {key!r} is not a dotted field name like optim.lr")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads "1e-4" as a string
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return nested


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update; returns a new dict."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return _fix_yaml_numbers(data)


def _fix_yaml_numbers(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _fix_yaml_numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_fix_yaml_numbers(x) for x in v]
    if isinstance(v, str) and _looks_numeric(v) and v.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        return float(v)
    return v


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: typing.Iterable[str] = ()) -> T:
    """Defaults of `cls`, updated by the YAML file at `path`, updated by `key=value` overrides."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    over = parse_overrides(overrides)
    try:
        return from_dict(cls, merge(data, over), where)
    except ConfigError as e:
        if over:
            raise ConfigError(f"{e} (after the command-line overrides)") from None
        raise


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None))


__all__ = ["ConfigError", "field", "dataclass", "from_dict", "to_dict", "load_config", "save_config",
           "parse_overrides", "merge", "positive", "non_negative", "probability", "one_of"]
