"""Baseline variants of ``unierase bench``: a baseline name with its own settings.

``GA[lr=3e-5,epochs=3]`` is GA with ``BaselineConfig(lr=3e-5, epochs=3)`` over its defaults, so
one bench run can hold several settings of the same baseline (a tuning grid) next to each other,
on one target model and one evaluation. The settings are ``BaselineConfig`` fields, each value
parsed as the field's type:

- int and float fields: a number (``lr=1e-4``, ``epochs=3``);
- bool fields: ``true`` or ``false``; optional fields also take ``none``;
- str fields: the text as written (it cannot hold ``,``, ``[`` or ``]``);
- tuple fields (``refusals``): the items separated by ``|`` (numbers where the field holds
  numbers).

``parse_value`` reads ``EditConfig`` fields the same way for ``unierase bench --edit-setting``.

The canonical name lists the settings in ``BaselineConfig``'s field order, with every value
written back from its parsed form (``GA[lr=3e-5,epochs=3]`` -> ``GA[epochs=3,lr=3e-05]``), so
two spellings of one setting are one variant. Variants of UniErase are not supported (its
settings are the Phase I and Phase II overrides of a whole bench run).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

OPEN, CLOSE = "[", "]"
TUPLE_SEPARATOR = "|"
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def split_method_list(text: str) -> list[str]:
    """The comma-separated method names of ``text``; commas inside ``[...]`` belong to a
    variant's settings ("GA[lr=1e-5,epochs=3],GD" -> ["GA[lr=1e-5,epochs=3]", "GD"]).

    Raises:
        ValueError: unbalanced or nested brackets.
    """
    names, current, depth = [], [], 0
    for ch in text:
        if ch == OPEN:
            if depth:
                raise ValueError(f"nested {OPEN!r} in the method list {text!r}")
            depth = 1
        elif ch == CLOSE:
            if not depth:
                raise ValueError(f"{CLOSE!r} without {OPEN!r} in the method list {text!r}")
            depth = 0
        elif ch == "," and not depth:
            names.append("".join(current))
            current = []
            continue
        current.append(ch)
    if depth:
        raise ValueError(f"unclosed {OPEN!r} in the method list {text!r}")
    names.append("".join(current))
    return [n.strip() for n in names if n.strip()]


def split_variant_text(text: str) -> tuple[str, str | None]:
    """(the method name, the text between the brackets or None) of ``"GA[lr=1e-5]"``.

    Raises:
        ValueError: text after ``]`` or brackets that do not close.
    """
    text = text.strip()
    if OPEN not in text and CLOSE not in text:
        return text, None
    head, sep, rest = text.partition(OPEN)
    if not sep or not rest.endswith(CLOSE) or OPEN in rest or CLOSE in rest[:-1]:
        raise ValueError(
            f"malformed method variant {text!r}: write METHOD[field=value,...], "
            "e.g. GA[lr=3e-5,epochs=3]"
        )
    return head.strip(), rest[:-1]


@cache
def _field_types(config: type | None = None) -> dict[str, Any]:
    """The settable fields of the dataclass ``config`` (default ``BaselineConfig``) and their
    types; fields starting with ``_`` and the free-form ``extra`` are left out."""
    if config is None:
        from unierase.baselines.config import BaselineConfig as config
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config)
            if not f.name.startswith("_") and f.name != "extra"}  # fmt: skip


def parse_value(field: str, text: str, config: type | None = None) -> Any:
    """``text`` as a value of the field ``field`` of the dataclass ``config`` (default
    ``BaselineConfig``; ``unierase bench --edit-setting`` passes ``EditConfig``).

    Raises:
        ValueError: an unknown field (the message lists the valid ones) or a value that is not
            of the field's type.
    """
    types_ = _field_types(config)
    kind_name = "BaselineConfig" if config is None else config.__name__
    if field not in types_:
        raise ValueError(f"unknown {kind_name} field {field!r}; valid: {', '.join(types_)}")
    hint, text = types_[field], text.strip()
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() == "none":
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        items = [s.strip() for s in text.split(TUPLE_SEPARATOR) if s.strip()]
        item_type = (typing.get_args(hint) or (str,))[0]
        if item_type in (int, float):
            try:
                return tuple(item_type(s) for s in items)
            except ValueError:
                raise ValueError(f"{field} takes {item_type.__name__}s separated by "
                                 f"{TUPLE_SEPARATOR!r}, not {text!r}") from None  # fmt: skip
        return tuple(items)
    if hint is str:
        return text
    if hint is bool and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    try:
        if hint is int:
            return int(text)
        if hint is float and math.isfinite(value := float(text)):
            return value
    except ValueError:
        pass
    if hint not in (bool, int, float):
        raise ValueError(f"{kind_name} field {field!r} has a type that cannot be set from text")
    kind = {bool: "true or false", int: "an integer", float: "a finite number"}[hint]
    raise ValueError(f"{field} takes {kind}, not {text!r}")


def format_value(value: Any) -> str:
    """A parsed value written back as ``parse_value`` reads it (floats as ``repr`` writes them:
    ``3e-05``, ``0.0001``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return TUPLE_SEPARATOR.join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def variant_name(method: str, settings: Mapping[str, Any]) -> str:
    """The canonical name of ``method`` with ``settings`` (none: the plain method name)."""
    if not settings:
        return method
    order = list(_field_types())
    keys = sorted(settings, key=order.index)
    return method + OPEN + ",".join(f"{k}={format_value(settings[k])}" for k in keys) + CLOSE


def parse_settings(parts: Iterable[str], config: type | None = None) -> dict[str, Any]:
    """``field=value`` texts (blank ones skipped) as fields of the dataclass ``config`` (default
    ``BaselineConfig``), each value read by :func:`parse_value`.

    Raises:
        ValueError: a text that is not field=value, a field set twice, an unknown field or a
            value of the wrong type.
    """
    settings: dict[str, Any] = {}
    for part in parts:
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"{part.strip()!r} is not field=value")
        if key in settings:
            raise ValueError(f"{key} is set twice")
        settings[key] = parse_value(key, value, config)
    return settings


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """(the baseline's registry name, its settings in field order) of ``"GA[lr=3e-5]"``; a
    plain name has no settings.

    The settings are checked as ``BaselineConfig`` checks them (``lr=0`` is an error here, not
    after the target model was evaluated).

    Raises:
        ValueError: an unknown baseline, a malformed variant, an unknown field, a repeated
            field, a value of the wrong type or out of range.
    """
    from unierase.baselines import get_method

    head, inner = split_variant_text(text)
    method = get_method(head)
    try:
        settings = parse_settings((inner or "").split(","))
        method.config(**settings)
    except ValueError as err:
        raise ValueError(f"{text!r}: {err}") from None
    order = list(_field_types())
    return method.name, {k: settings[k] for k in sorted(settings, key=order.index)}


def canonical_variant(text: str) -> str:
    """The canonical name of a baseline or baseline variant (see ``parse_variant``)."""
    return variant_name(*parse_variant(text))


def variant_dir_name(name: str) -> str:
    """A file-system name for a canonical method or variant name: ``+`` -> ``_``, settings
    joined by ``__``, anything but letters, digits and ``.=_-`` -> ``-``
    ("NPO+GD[epochs=3,lr=3e-05]" -> "NPO_GD__epochs=3__lr=3e-05")."""
    head, inner = split_variant_text(name)
    parts = [head.replace("+", "_")]
    if inner:
        parts += [re.sub(r"[^A-Za-z0-9.=_-]", "-", p.strip()) for p in inner.split(",")]
    return "__".join(parts)
