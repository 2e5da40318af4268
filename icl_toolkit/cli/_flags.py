"""Command-line flags generated from the pydantic configs, so that every option is written once.

A config field is the flag: its name (``max_context`` -> ``--max-context``), its type (a ``Literal`` becomes a
choice), its default and its docstring (the help text) come from the model; Typer shows them, pydantic validates
the values (a bad value is one line naming the flag). A :class:`FlagGroup` picks the fields a command takes and,
where the command line names them otherwise, the flag's name; :func:`with_flags` adds the groups' flags to a
command, which receives each group's values as one argument (a config, or a dict of options for a config built
with more settings later). The CLI states no default and no help text of a config field itself, and
``tests/cli/test_cli.py`` checks every such flag's default against its field's.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional, Union, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from icl_toolkit.core.errors import ConfigError

__all__ = ["FlagGroup", "with_flags", "flag_error", "help_text", "flag_origins"]

_ROLE = re.compile(r":\w+:`(~?)([^`]+)`")


def help_text(doc: str | None) -> str:
    """A field's docstring as plain help text: reST roles and literals unwrapped, lines joined."""
    if not doc:
        return ""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), doc)
    text = text.replace("``", "").replace("[", "\\[")  # a bracket is Rich markup in Typer's help otherwise
    return " ".join(text.split())


def flag_error(exc: ValidationError, flags: Mapping[str, str] | None = None) -> ConfigError:
    """A one-line error naming the command-line flag behind a config field that failed validation.

    The flag is ``--field-name``, or ``flags[field]`` where a flag is named otherwise.
    """
    err = exc.errors()[0]
    name = next((str(x) for x in reversed(err["loc"]) if isinstance(x, str)), "-")
    flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
    return ConfigError(f"{flag}: {err['msg']} (got {err.get('input')!r}).")


def _is_tuple(tp: Any) -> bool:
    return get_origin(tp) is tuple


def _cli_type(tp: Any) -> Any:
    """The type Typer parses for a field type: optional types stay optional, tuples are given as one
    comma-separated string."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = args[0] if len(args) == 1 else tp
        return Optional[_cli_type(inner)]
    if _is_tuple(tp):
        return str
    return tp


def _bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
    return out


@dataclass(frozen=True)
class FlagGroup:
    """Some fields of a config as flags.

    Args:
        model: the pydantic config whose fields are the flags.
        fields: the fields to offer, in order (default: all).
        rename: flag names that differ from the field name (``{"address": "ray_address"}`` gives
            ``--ray-address``).
        decls: Typer parameter declarations where a flag is spelt otherwise (``{"lora": "--lora/--full"}``).
        prefix: put before each help text (``"ray: "``).
        extra_help: appended to one field's help (what the flag means on this command only).
    """

    model: type[BaseModel]
    fields: Sequence[str] | None = None
    rename: Mapping[str, str] = field(default_factory=dict)
    decls: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""
    extra_help: Mapping[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        names = list(self.fields) if self.fields is not None else list(self.model.model_fields)
        unknown = [n for n in names if n not in self.model.model_fields]
        if unknown:
            raise TypeError(f"{self.model.__name__} has no field {', '.join(unknown)}")
        return names

    def param(self, name: str) -> str:
        """The command parameter (and flag) name of field ``name``."""
        return self.rename.get(name, name)

    def default(self, name: str) -> Any:
        """The flag's default: the field's (a tuple shown as its comma-separated string)."""
        value = self.model.model_fields[name].get_default(call_default_factory=True)
        return (
            ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, tuple) else value
        )

    def parameters(self) -> list[inspect.Parameter]:
        out = []
        for name in self.names():
            info = self.model.model_fields[name]
            text = self.prefix + help_text(info.description)
            if name in self.extra_help:
                text += " " + self.extra_help[name]
            if _is_tuple(info.annotation):
                text += " Comma-separated."
            decl = [self.decls[name]] if name in self.decls else []
            option = typer.Option(*decl, help=text, **_bounds(info))
            out.append(
                inspect.Parameter(
                    self.param(name),
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[_cli_type(info.annotation), option],
                    default=self.default(name),
                )
            )
        return out

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The field values of the flags' values (a comma-separated tuple split; an unset optional flag left out,
        so the config's own default applies)."""
        out: dict[str, Any] = {}
        for name in self.names():
            value = given[self.param(name)]
            if value is None:
                continue
            if _is_tuple(self.model.model_fields[name].annotation) and isinstance(value, str):
                value = tuple(x.strip() for x in value.split(",") if x.strip())  # pydantic converts the items
            out[name] = value
        return out

    def build(self, given: Mapping[str, Any], **more: Any) -> Any:
        """The config of the flags' values (and ``more`` fields), validated; a bad value names its flag."""
        try:
            return self.model(**self.values(given), **more)
        except ValidationError as exc:
            raise flag_error(exc, {n: "--" + self.param(n).replace("_", "-") for n in self.names()}) from None


def flag_origins(command: Callable[..., Any]) -> dict[str, tuple[type[BaseModel], str]]:
    """The generated flags of a command: parameter name -> (config, field)."""
    return dict(getattr(command, "__icl_flags__", {}))


def with_flags(
    param: str, *groups: FlagGroup, build: Callable[..., Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a command the flags of ``groups``: Typer sees them as the command's own options; the
    command receives one argument named ``param``: ``build(values)`` where ``values`` are the given fields of all
    groups (by field name), or, without ``build``, the first group's config built from them."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(command, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != param]
        added: dict[str, inspect.Parameter] = {}
        origins = flag_origins(command)
        for g in groups:
            for p, name in zip(g.parameters(), g.names()):
                if p.name in added:  # a field two sections share (seed, horizon_years): one flag, one default
                    if added[p.name].default != p.default:
                        raise TypeError(f"--{p.name}: two defaults ({added[p.name].default!r}, {p.default!r})")
                    continue
                added[p.name] = p
                origins[p.name] = (g.model, name)

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in added}
            if build is not None:
                values: dict[str, Any] = {}
                for g in groups:
                    values.update(g.values(given))
                arg = build(values)
            else:
                arg = groups[0].build(given)
            return command(**{param: arg}, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + list(added.values())
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__icl_flags__ = origins  # type: ignore[attr-defined]
        del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
        return wrapper

    return decorate
