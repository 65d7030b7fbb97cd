"""``key=value`` overrides: dotted keys into a nested dict, each value typed by the schema field it sets.

``output_dir=1e3`` stays the text "1e3" (the field takes text); ``learning_rate=3e-4`` is a float (YAML 1.1
would read it as a string). A key no schema names is parsed as a YAML scalar, and validation reports it.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from sftlab.errors import UserError

# (model, field) -> the model a free-form mapping field holds (a sweep's ``train`` holds TrainConfig keys).
Overlays = dict[tuple[type[BaseModel], str], type[BaseModel]]


def parse_overrides(overrides: list[str], schema: type[BaseModel] | None = None,
                    overlays: Overlays | None = None) -> dict[str, Any]:
    """Turn ``["lora.r=16", "packing=true"]`` into a nested dict.

    Each value is typed by the ``schema`` field it sets (see :func:`_parse_scalar`): ``output_dir=1e3``
    stays the string "1e3", ``learning_rate=3e-4`` is a float. Keys the schema does not know are parsed as
    YAML scalars (and then reported as unknown keys by validation).
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value (for example learning_rate=3e-4)")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = _parse_scalar(raw, _annotation_at(schema, parts, overlays or {}) if schema else None)
    return tree


def _parse_scalar(raw: str, annotation: Any = None) -> Any:
    """``raw`` as the value of a field of type ``annotation``: YAML scalar parsing, except that a field that
    takes only text gets ``raw`` as it is, and ``3e-4`` is a float where a number is wanted (YAML 1.1 reads
    it as a string). Without an annotation (an unknown key, a free-form mapping), a float-like string is a float.
    """
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    kinds = _leaf_types(annotation) if annotation is not None else None
    if kinds is not None:
        if value is None and type(None) in kinds:
            return None
        if kinds <= {str, type(None)}:
            return raw
        if not kinds & {float, int}:
            return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits: Optional, unions, Annotated and Literal values flattened."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(v) for v in get_args(annotation)}
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_leaf_types(a) for a in get_args(annotation)))
    return {origin or annotation}


def _annotation_at(schema: type[BaseModel], parts: list[str], overlays: Overlays) -> Any:
    """The annotation of the field that the dotted key ``parts`` sets in ``schema``; None when unknown."""
    model: Any = schema
    annotation: Any = None
    for i, part in enumerate(parts):
        if model is None:
            return None
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        annotation = field.annotation
        if i == len(parts) - 1:
            return annotation
        name = next(n for n, f in model.model_fields.items() if f is field)
        nested = [t for t in _leaf_types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        model = overlays.get((model, name)) or (nested[0] if len(nested) == 1 else None)
    return annotation
