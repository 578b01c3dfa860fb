"""A pipeline's own schema for its recipe sections: attrs classes, structured strictly.

A pipeline declares, per section it owns (``dataset``, ``architecture``, ``training``),
an attrs class whose fields are the keys it reads::

    @attrs.frozen
    class Training:
        epochs: int = attrs.field(default=3, validator=attrs.validators.ge(1))
        lr: float = 0.01

    @pipeline_schema(training=Training)
    def train(orch): ...
        orch.cfg.training.epochs        # an int >= 1, 3 when the recipe leaves it out

The section's data is structured into the class with the same rules as the
orchestrator's own sections: every problem gathered with its dotted path, no silent
coercion (``"three"`` is not an int, ``1.5`` is not an int, ``"yes"`` not a bool),
unknown keys rejected with the closest valid key, and each field's attrs validator
run on its value. The recipe's data itself is kept verbatim (the config hash does not
change); the typed instance is what attribute access returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from orchestrator_fsm.config.problems import (
    MISSING,
    Invalid,
    Problem,
    UnknownKey,
    describe,
)

__all__ = ["SCHEMA_ATTRIBUTE", "SCHEMA_SECTIONS", "Schema", "pipeline_schema", "schema_of"]

#: The sections a pipeline may declare a schema for.
SCHEMA_SECTIONS: Final = ("dataset", "architecture", "training")

#: Where :func:`pipeline_schema` keeps the schema on the entry function.
SCHEMA_ATTRIBUTE: Final = "__pipeline_schema__"

#: Section name to the attrs class its keys are structured into.
Schema = Mapping[str, type]

_FunctionT = TypeVar("_FunctionT", bound=Callable[..., object])


def check_schema(schema: Mapping[str, object]) -> dict[str, type]:
    """``schema`` as a dict, after checking it names known sections and attrs classes."""
    checked: dict[str, type] = {}
    for section, cls in schema.items():
        if section not in SCHEMA_SECTIONS:
            raise ValueError(
                f"a pipeline schema is for the sections {', '.join(SCHEMA_SECTIONS)}; "
                f"got {section!r}"
            )
        if not (isinstance(cls, type) and attrs.has(cls)):
            raise TypeError(
                f"the schema of section {section!r} must be an attrs class, got {cls!r}"
            )
        attrs.resolve_types(cls)
        checked[section] = cls
    return checked


def pipeline_schema(**sections: type) -> Callable[[_FunctionT], _FunctionT]:
    """Declare the schema of a pipeline's sections on its entry function (a decorator).

    ``sections`` maps ``dataset``, ``architecture`` or ``training`` to an attrs class.
    ``orchestrator-fsm run`` and ``validate --entry`` then structure those sections
    with it before any run directory exists.
    """
    schema = check_schema(sections)

    def declare(function: _FunctionT) -> _FunctionT:
        setattr(function, SCHEMA_ATTRIBUTE, schema)
        return function

    return declare


def schema_of(entry: object) -> dict[str, type]:
    """The schema ``entry`` declares with :func:`pipeline_schema` (empty when none)."""
    declared = getattr(entry, SCHEMA_ATTRIBUTE, None)
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise TypeError(f"{SCHEMA_ATTRIBUTE} must be a mapping of section to attrs class")
    return check_schema(declared)


def _strict_int(value: object, _type: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise Invalid("an integer", value)


def _strict_float(value: object, _type: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise Invalid("a finite number", value)


def _strict_str(value: object, _type: object) -> str:
    if isinstance(value, str):
        return value
    raise Invalid("a string", value)


def _strict_bool(value: object, _type: object) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid("true or false", value)


def _path(value: object, _type: object) -> Path:
    if isinstance(value, str) and value:
        return Path(value)
    raise Invalid("a non-empty path", value)


_converter = cattrs.Converter(detailed_validation=True)
for _type, _hook in (
    (int, _strict_int),
    (float, _strict_float),
    (str, _strict_str),
    (bool, _strict_bool),
    (Path, _path),
):
    _converter.register_structure_hook(_type, _hook)


def _validated(field: attrs.Attribute[Any]) -> Callable[[object, object], object]:
    """Structure one field's value by its type, then run its attrs validator on it, so
    a validator's complaint is reported at the field's path."""

    def structure(value: object, _type: object) -> object:
        typed = _converter.structure(value, cast(Any, field.type))
        if field.validator is not None:
            try:
                field.validator(None, field, typed)
            except (ValueError, TypeError) as exc:
                raise Problem(str(exc)) from None
        return typed

    return structure


_structure_fns: dict[type, Callable[[Mapping[str, Any], type], Any]] = {}


def _structure_fn(cls: type) -> Callable[[Mapping[str, Any], type], Any]:
    if cls not in _structure_fns:
        hooks: dict[str, Any] = {
            field.name: override(struct_hook=_validated(field))
            for field in attrs.fields(cls)
            if field.validator is not None
        }
        _structure_fns[cls] = make_dict_structure_fn(
            cls, _converter, _cattrs_forbid_extra_keys=False, **hooks
        )
    return _structure_fns[cls]


def _type_name(annotation: object) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    return f"a value of type {getattr(annotation, '__name__', annotation)}"


def _cattrs_problems(error: ClassValidationError) -> list[tuple[str, str]]:
    """``(dotted path, description)`` for each field cattrs found wrong."""
    descriptions: list[str] = []

    def remember(exc: BaseException, _type: Any) -> str:
        descriptions.append(describe(exc))
        return str(len(descriptions) - 1)

    # transform_error renders "<description> @ $.a.b"; descriptions are replaced by
    # their index so that user text containing " @ " cannot confuse the split.
    problems = []
    for entry in cattrs.transform_error(error, path="$", format_exception=remember):
        index, _, path = entry.partition(" @ ")
        problems.append((path.removeprefix("$").removeprefix("."), descriptions[int(index)]))
    return problems


def structure_section(
    cls: type, data: Mapping[str, Any], reserved: Mapping[str, object]
) -> tuple[object | None, list[tuple[str, str]]]:
    """``data`` structured into ``cls``, or None; and every problem, as ``(path in the
    section, description)`` (path ``""``: the section as a whole).

    ``reserved`` are the keys the orchestrator itself reads in this section (checked
    elsewhere), which the schema need not declare.
    """
    fields = attrs.fields(cls)
    known = [field.name for field in fields]
    allowed = known + [key for key in reserved if key not in known]
    problems = [(str(key), str(UnknownKey(key, allowed))) for key in data if key not in allowed]
    given = {key: value for key, value in data.items() if key in known}
    missing = [
        field
        for field in fields
        if field.default is attrs.NOTHING and field.name not in given and field.init
    ]
    problems += [(field.name, str(Invalid(_type_name(field.type), MISSING))) for field in missing]
    if missing:
        return None, problems
    instance: object | None = None
    try:
        instance = _structure_fn(cls)(given, cls)
    except ClassValidationError as exc:
        problems += _cattrs_problems(exc)
    except (ValueError, TypeError) as exc:  # a validator relating several fields
        problems.append(("", str(exc)))
    return (None if problems else instance), problems
