"""What a dataset config must set and what every default is, read from the pydantic models.

Why generated: a hand-written list of settings goes stale the day a field is added; this one
is the schema itself (`nightowl check-config --explain`), so it cannot disagree with what
`load_config` accepts.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.config import DatasetConfig


@dataclass(frozen=True)
class Setting:
    """One leaf of the config: its dotted path, type, default (if any) and description."""

    path: str
    kind: str
    required: bool
    """Must be set whenever its section is present (a required section: always)."""
    section_optional: bool
    """It sits inside a section the user may leave out (then it is not needed)."""
    default: Any = None
    description: str = ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections an annotation holds (a section, a list of them, an optional one)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _kind(annotation: Any) -> str:
    """A short, readable type: Literal values spelled out, Optional as `| None`."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(v) for v in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_kind(a) for a in get_args(annotation))
    if origin is not None:
        args = ", ".join(_kind(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> Any:
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def settings(model: type[BaseModel] = DatasetConfig, prefix: str = "",
             optional: bool = False) -> Iterator[Setting]:
    """Every leaf setting of `model`, depth first, in the order the schema declares them."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        sections = _models_in(info.annotation)
        if sections:
            many = get_origin(info.annotation) is list or get_origin(info.annotation) is dict
            inner_optional = optional or not info.is_required()
            for section in sections:
                label = f"{path}[]" if many else path
                if len(sections) > 1:  # a choice of section kinds (e.g. a file or synthetic source)
                    label = f"{label}<{section.__name__}>"
                    inner_optional = True
                yield from settings(section, f"{label}.", inner_optional)
            continue
        yield Setting(path, _kind(info.annotation), info.is_required(), optional,
                      None if info.is_required() else _default(info),
                      " ".join((info.description or "").split()))


def explain(model: type[BaseModel] = DatasetConfig) -> str:
    """The text of `nightowl check-config --explain`."""
    leaves = list(settings(model))
    must = [s for s in leaves if s.required and not s.section_optional]
    when = [s for s in leaves if s.required and s.section_optional]
    defaults = [s for s in leaves if not s.required]
    sections = {s.path.split(".")[0] for s in leaves}

    def line(s: Setting, with_default: bool) -> str:
        text = f"  {s.path}: {s.kind}"
        if with_default:
            text += f" = {s.default!r}"
        return f"{text}  -- {s.description}" if s.description else text

    out = [f"{model.__name__}: {len(sections)} top-level settings/sections, {len(leaves)} fields.",
           "", f"You must set ({len(must)}):", *(line(s, False) for s in must),
           "", f"Required only when you use the section that holds them ({len(when)}):",
           *(line(s, False) for s in when),
           "", f"Defaults (set one only to change it) ({len(defaults)}):",
           *(line(s, True) for s in defaults)]
    return "\n".join(out)
