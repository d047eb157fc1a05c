"""Typed, documented settings: the machinery of the run config and of every science config.

A section is a dataclass whose fields are `opt(default, unit, doc, ...)`; a field whose default_factory
is another such dataclass is a sub-section (TOML table `[section.sub]`). A subclass of a section that adds
fields is a section too. `check_section` validates an instance (what a science config's __post_init__
calls, so API users get the checks a TOML file gets), `apply` sets values from a parsed TOML mapping,
`section_toml` prints a section with its docs and units. Bad values raise InputError (a ValueError)
naming the source, the key and what was expected.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers

from twinkles_hpc.errors import InputError

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def opt(default, unit, doc, *, choices=None, lo=None, hi=None, lo_open=False):
    """A config field: default value, unit ('' if dimensionless), one-line doc and bounds."""
    return dataclasses.field(default=default, metadata=dict(unit=unit, doc=doc, choices=choices, lo=lo, hi=hi,
                                                            lo_open=lo_open))


def subsection(f):
    """The section class of field f if it is a sub-section (its default_factory is a dataclass), else None."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def _fields(obj):
    return [f for f in dataclasses.fields(obj) if not f.metadata.get("internal")]


def check_value(source, key, f, value):
    """value checked against field f (type, choices, finite, bounds) and converted (int to float, numpy
    scalars to Python); raises InputError(source, key, expected, value)."""
    want = f.type if isinstance(f.type, type) else _TYPES[f.type]
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want)
    if not ok:
        raise InputError(source, key, _TYPE_NAMES[want], value)
    if want in (int, float):
        value = want(value)
    m = f.metadata
    unit = f" {m['unit']}" if m.get("unit") else ""
    if m.get("choices") and value not in m["choices"]:
        raise InputError(source, key, "one of " + ", ".join(m["choices"]), value)
    if want in (int, float):
        if want is float and not math.isfinite(value):
            raise InputError(source, key, "a finite number", value)
        lo, hi = m.get("lo"), m.get("hi")
        if lo is not None and (value < lo or (m.get("lo_open") and value == lo)):
            raise InputError(source, key, f"a value {'>' if m.get('lo_open') else '>='} {lo}{unit}", value)
        if hi is not None and value > hi:
            raise InputError(source, key, f"a value <= {hi}{unit}", value)
    return value


def check_section(obj, source=None, prefix=""):
    """Check every field of section obj and its sub-sections in place (values normalised as check_value
    does); raises InputError naming source (default: obj's class name) and the key, prefix.key."""
    source = type(obj).__name__ if source is None else source
    for f in _fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        sub = subsection(f)
        if sub is None:
            setattr(obj, f.name, check_value(source, key, f, value))
        elif isinstance(value, sub):
            check_section(value, source, key)
        else:
            raise InputError(source, key, f"a {sub.__name__}", value)


def apply(obj, mapping, source, prefix=""):
    """Set the fields of section obj (and its sub-sections, from sub-tables) from a parsed TOML mapping;
    an unknown key, a wrong type or an impossible value raises InputError(source, prefix.key, ...)."""
    known = {f.name: f for f in _fields(obj)}
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise InputError(source, full, "a key among " + ", ".join(known), "unknown key")
        f = known[key]
        if subsection(f) is None:
            setattr(obj, key, check_value(source, full, f, value))
        elif isinstance(value, dict):
            apply(getattr(obj, key), value, source, full)
        else:
            raise InputError(source, full, "a [table]", value)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def section_toml(name, obj):
    """Lines of TOML for section obj as table [name]: for each field a comment with its doc and unit, then
    `key = value`; the sub-sections follow as [name.sub]; a blank line ends each table."""
    out, subs = [f"[{name}]"], []
    for f in _fields(obj):
        if subsection(f) is not None:
            subs.append(f)
            continue
        m = f.metadata
        unit = f" [{m['unit']}]" if m.get("unit") else ""
        out.append(f"# {m.get('doc', '')}{unit}")
        out.append(f"{f.name} = {toml_value(getattr(obj, f.name))}")
    out.append("")
    for f in subs:
        out += section_toml(f"{name}.{f.name}", getattr(obj, f.name))
    return out


def to_dict(obj):
    """The section's values as a dict (sub-sections as nested dicts)."""
    return dataclasses.asdict(obj)
