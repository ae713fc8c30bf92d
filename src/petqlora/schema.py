"""Typed fields with their rules: how every config of the project (the pipeline parameters, each step's
config) declares a field's type, default, allowed values, range and one-line description once, checks
values against them, and parses them from JSON, YAML, KFP or command-line strings."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from petqlora.problems import Problems


@dataclass(frozen=True)
class Rule:
    """What a field's value must be, beyond its type. ``low``/``high`` bound numbers (open when asked)."""

    help: str
    allowed: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nonempty: bool = False
    fix: str | None = None

    def problem(self, value: Any) -> str | None:
        if self.nonempty and isinstance(value, str) and not value.strip():
            return "must not be empty"
        if self.allowed is not None and value not in self.allowed:
            return "must be one of " + ", ".join(map(str, self.allowed))
        if value is None or isinstance(value, (str, bool, Mapping, tuple, list)):
            return None
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.interval()}" if below or above else None

    def interval(self) -> str:
        low, high = (f"{b:g}" if isinstance(b, float) else str(b) for b in (self.low, self.high))  # 2**32-1 in full
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def field(default: Any, help: str, **rule: Any) -> Any:
    """A dataclass field with its rule; mutable defaults (dicts, lists) are copied for each instance."""
    meta = {"rule": Rule(help, **rule)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def required(help: str, **rule: Any) -> Any:
    return dataclasses.field(metadata={"rule": Rule(help, **rule)})


def same_as(cls: type, name: str) -> Any:
    """The field ``name`` of ``cls``, default and rule included: a step config shares the pipeline's."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    if source.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=source.metadata)
    return dataclasses.field(default=source.default, metadata=source.metadata)


def rule_of(cls: type, name: str) -> Rule | None:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("rule")


def types_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _options(tp: Any) -> tuple[Any, ...]:
    """The alternatives of ``X | None`` (or just ``(X,)``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def type_problem(tp: Any, value: Any) -> str | None:
    """Why ``value`` is not of type ``tp`` (bool is no int, NaN and inf are no float), or None."""
    for option in _options(tp):
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if base is bool and isinstance(value, bool):
            return None
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if (base is float and isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)):
            return None
        if base is str and isinstance(value, str):
            return None
        if base is dict and isinstance(value, Mapping):
            return None
        if base is list and isinstance(value, list):
            return None
        if base is tuple and isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return None
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
             dict: "a JSON object", list: "a JSON list", tuple: "a list of strings", type(None): "null"}
    return "must be " + " or ".join(names.get(typing.get_origin(o) or o, str(o)) for o in _options(tp))


def _field_problem(f: dataclasses.Field, tp: Any, value: Any, problems: Problems) -> bool:
    rule = f.metadata.get("rule")
    problem = type_problem(tp, value) or (rule.problem(value) if rule else None)
    if problem:
        problems.add(f.name, value, problem, rule.fix if rule else None)
    return bool(problem)


def check(obj: Any, problems: Problems, names: tuple[str, ...] | None = None) -> set[str]:
    """Adds a problem for each field of ``obj`` whose value breaks its type or rule; returns their names,
    so that the caller's cross-field rules can skip fields already wrong."""
    hints = types_of(type(obj))
    return {f.name for f in dataclasses.fields(obj)
            if (names is None or f.name in names) and _field_problem(f, hints[f.name], getattr(obj, f.name), problems)}


def coerce(tp: Any, value: Any) -> Any:
    """JSON, YAML and KFP spellings of a typed value: KFP's Struct turns 20 into 20.0, JSON has no tuple."""
    options = [typing.get_origin(o) or o for o in _options(tp)]
    if isinstance(value, float) and value.is_integer() and int in options and float not in options:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in options:
        return float(value)
    if isinstance(value, list) and tuple in options:
        return tuple(value)
    return value


def parse_text(tp: Any, text: str) -> Any:
    """A command-line string as the field's type: ``64`` for an int, ``true`` for a bool, JSON for a dict.
    Raises ValueError with the rule when the text is not of that type."""
    options = [typing.get_origin(o) or o for o in _options(tp)]
    if type(None) in options and text in ("", "null", "none", "None"):
        return None
    if str in options:
        return text
    if bool in options:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError("must be true or false")
    if int in options:
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be an integer") from None
    if float in options:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    try:
        return coerce(tp, json.loads(text, object_pairs_hook=unique_keys))
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg} at character {exc.pos})") from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are each given once (json.loads would keep the last silently): an
    ``object_pairs_hook``; raises ValueError naming the repeated key."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"has the key {key!r} twice; fix: give each key once")
        out[key] = value
    return out


def load_yaml(text: str) -> Any:
    """YAML as yaml.safe_load reads it, except that a key given twice in one mapping is refused (safe_load keeps
    the last silently). Raises yaml.YAMLError."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
            for i, key in enumerate(keys):
                if key in keys[:i]:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            node.value[i][0].start_mark)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeyLoader)


def from_mapping(cls: type, values: Mapping[str, Any], what: str, *, text: bool = False) -> Any:
    """``cls(**values)`` after refusing unknown keys and coercing each value to its field's type; with
    ``text``, values are command-line strings. Every problem is raised at once, as ValueError."""
    problems = Problems(what)
    hints = types_of(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, Mapping):
        problems.add(what, values, "must be a mapping of field names to values")
        problems.raise_if_any()
    for key in sorted(set(values) - set(known)):
        problems.add(key, values[key], "is not a known field", f"use one of {', '.join(known)}")
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is f.default_factory is dataclasses.MISSING:
            rule = f.metadata.get("rule")
            problems.add(f.name, None, "is required", rule.fix if rule else None)
    parsed = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            parsed[key] = parse_text(hints[key], value) if text and isinstance(value, str) else coerce(hints[key], value)
        except ValueError as exc:
            problems.add(key, value, str(exc))
            continue
        _field_problem(fields[key], hints[key], parsed[key], problems)
    problems.raise_if_any()
    return cls(**parsed)


def to_json_dict(obj: Any) -> dict:
    """The config as JSON values (tuples become lists); ``from_mapping`` reads it back."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))
