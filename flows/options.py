"""Command-line options from pydantic models: one `--field-name` option per field, with the
field's default, choices, bounds and description as its help, and the model checking the
values when it is built from the parsed arguments.

    names = add_model_options(parser, Params, only=("n", "seed"))
    params = build_model(Params, parser.parse_args(), names)

The annotations it knows: bool (`--x/--no-x`), a Literal (choices), a list (comma-separated
and repeatable, of a Literal too), `X | None` and `Annotated[X, ...]` (as X: the model runs
the validators). `OneLineErrorParser` reports a usage error in one line, `error_message`
any other failure the user can fix.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError


class _ListOption(argparse.Action):
    """A list option: comma-separated values, and repeatable; the first use replaces the
    default, later uses add to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        if not getattr(namespace, f"_{self.dest}_given", False):
            setattr(namespace, self.dest, [])
            setattr(namespace, f"_{self.dest}_given", True)
        getattr(namespace, self.dest).extend(values)


def _comma_list(item_type, choices: tuple | None):
    def parse(text: str) -> list:
        items = [item_type(part.strip()) for part in text.split(",") if part.strip()]
        for item in items:
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {item!r} (choose from {', '.join(map(str, choices))})"
                )
        return items

    parse.__name__ = f"{item_type.__name__} list"  # argparse: "invalid float list value: 'x'"
    return parse


def _option_kwargs(annotation, default) -> dict:
    """argparse keyword arguments for a pydantic field's annotation."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):  # X | None: an optional X
        annotation = next(a for a in get_args(annotation) if a is not type(None))
        origin = get_origin(annotation)
    if origin is Annotated:  # a checked type: its validator runs in the parameter model
        annotation = get_args(annotation)[0]
        origin = get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        (item,) = get_args(annotation)
        choices = get_args(item) if get_origin(item) is Literal else None
        item_type = type(choices[0]) if choices else item
        return {
            "type": _comma_list(item_type, choices),
            "metavar": "A,B,...",
            "action": _ListOption,
        }
    if origin is Literal:
        choices = get_args(annotation)
        return {"type": type(choices[0]), "choices": choices}
    return {"type": annotation}


def _bounds(field) -> str:
    """The field's numeric bounds as text, e.g. ">= 1, <= 10000000"."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = []
    for item in field.metadata:
        for key, sign in signs.items():
            value = getattr(item, key, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def add_model_options(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    only: Iterable[str] | None = None,
    positional: Iterable[str] = (),
    defaults: BaseModel | None = None,
) -> list[str]:
    """Add `--field-name` options for `model`'s fields (all, or `only`); returns their names.
    Defaults are the model's, or those of the instance `defaults` (a parameter nested with
    other defaults, such as the main job's evaluation); the model checks values when built."""
    names = list(only) if only is not None else list(model.model_fields)
    for name in names:
        field = model.model_fields[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if defaults is not None:
            default = getattr(defaults, name)
        kwargs = _option_kwargs(field.annotation, default)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        notes = [f"default: {shown}"] if default is not None else []
        notes += [_bounds(field)] if _bounds(field) else []
        help_text = field.description or ""
        if notes:
            help_text += f" ({'; '.join(notes)})" if help_text else "; ".join(notes)
        if name in positional:
            parser.add_argument(name, help=help_text, **kwargs)
        else:
            flag = "--" + name.replace("_", "-")
            parser.add_argument(flag, dest=name, default=default, help=help_text, **kwargs)
    return names


def build_model(model: type[BaseModel], args: argparse.Namespace, names: Iterable[str]):
    return model(**{name: getattr(args, name) for name in names})


def error_message(error: Exception) -> str:
    """A failure the user can fix, in one line: a model's refusal (ValidationError) with each
    place named as its option is (`dask-address: ...`); a file or folder that cannot be read
    or written (OSError), and why; anything else, its own message."""
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors():
            where = ".".join(str(x) for x in e["loc"]) or error.title
            parts.append(f"{where.replace('_', '-')}: {e['msg']}")
        return "; ".join(parts)
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return f"cannot use{where}: {error.strerror or error}"
    return str(error)


# ---------------------------------------------------------------------------- the parser


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line, `PROGRAM: error: ...`, that points at the
    command's --help for the usage."""

    def error(self, message: str):
        program = self.prog.split()[0]  # a subcommand's prog is "PROGRAM COMMAND"
        self.exit(2, f"{program}: error: {message} (see {self.prog} --help)\n")


def with_parents(add_parser, common: argparse.ArgumentParser):
    """`add_parser` (of a subparsers action) that gives every subcommand the options of
    `common` too, so they may stand before or after the command."""

    def add(name, **kwargs):
        return add_parser(name, parents=[common], **kwargs)

    return add
