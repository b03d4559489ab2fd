"""Pydantic fields from the fields of a task's dataclass spec, and the spec back from a model.

    class ShapesParams(BaseModel):
        n: int = spec_field(ShapesSpec, "n", ge=1, description="number of image-text pairs")

        def to_spec(self) -> ShapesSpec:
            return to_spec(self, ShapesSpec, faults=FaultRates.uniform(self.fault_rate))

A parameter's default is its spec's, so it is written once, in the task; the model adds
what only a form and a command line need (bounds, a description). A spec's tuple is a list
in the model (JSON has no tuples) and a tuple again in the spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel, Field

Spec = TypeVar("Spec")


def spec_default(spec: Any, name: str) -> Any:
    """The default of field `name` of the dataclass `spec`; of an instance (a nested spec,
    such as the training settings a trainer's spec starts with), its value."""
    if not isinstance(spec, type):
        return getattr(spec, name)
    field = spec.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def spec_field(spec: Any, name: str, **kwargs: Any) -> Any:
    """A pydantic Field whose default is `spec_default(spec, name)`, a tuple as a list;
    `kwargs` are the Field's bounds and description."""
    default = spec_default(spec, name)
    return Field(list(default) if isinstance(default, tuple) else default, **kwargs)


def to_spec(model: BaseModel, spec: type[Spec], /, **values: Any) -> Spec:
    """`spec` with the model's values of the fields the two share (lists as tuples), and
    `values` for the others or instead; the spec's defaults for the rest."""
    shared = [f.name for f in dataclasses.fields(spec) if f.name in type(model).model_fields]
    found = {name: getattr(model, name) for name in shared}
    found = {k: tuple(v) if isinstance(v, list) else v for k, v in found.items()}
    return spec(**found | values)
