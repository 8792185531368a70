"""Options dataclasses whose fields are also the command-line flags (standard library only).

An option is written once, as a dataclass field made with :func:`option`: its default, its help text,
its flag spelling and argparse details live in the field's ``metadata``. :func:`add_options` turns the
fields of a dataclass into flags; :func:`from_namespace` turns parsed arguments back into the dataclass
at the CLI's edge. So a default lives in one place: the dataclass.

Booleans: a ``False`` default is a ``store_true`` switch; a ``True`` default with ``negate`` is the
``--no-<name>`` switch that turns it off (``progress`` <- ``--no-progress``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, field, fields
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    type: Callable[[str], Any] | None = None,
    choices: Iterable[str] | None = None,
    group: str = "",
    negate: bool = False,
    cli: bool = True,
    suppress: bool = False,
    required: bool = False,
    nargs: str | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field that is also a flag: ``flags`` (default ``--<name-with-dashes>``, or
    ``--no-<name>`` with ``negate``), ``type`` / ``choices`` for argparse, ``group`` to add the flags of
    a subset, ``cli=False`` for a field with no flag (set by code), ``suppress`` to hide it from
    ``--help``; ``required``, ``nargs`` and ``const`` go to argparse as they are."""
    meta = {
        "help": help,
        "flags": tuple(flags),
        "type": type,
        "choices": tuple(choices) if choices is not None else None,
        "group": group,
        "negate": negate,
        "cli": cli,
        "suppress": suppress,
        "required": required,
        "nargs": nargs,
        "const": const,
    }
    return field(default=default, metadata=meta)


def _flags(f: Field) -> tuple[str, ...]:
    meta = f.metadata
    if meta["flags"]:
        return meta["flags"]
    stem = f.name.replace("_", "-")
    return (f"--no-{stem}",) if meta["negate"] else (f"--{stem}",)


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    groups: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add the flags of ``cls``'s :func:`option` fields (those of ``groups`` when given, none of
    ``exclude``) to ``parser``; ``defaults`` overrides a field's default for this parser only (a
    command's own default, e.g. ``project``). A flag added twice is argparse's conflict error."""
    wanted = None if groups is None else set(groups)
    skip = set(exclude)
    for f in fields(cls):
        meta = f.metadata
        if "help" not in meta or not meta["cli"] or f.name in skip:
            continue
        if wanted is not None and meta["group"] not in wanted:
            continue
        default = (defaults or {}).get(f.name, f.default)
        if default is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: options need defaults")
        help_text = argparse.SUPPRESS if meta["suppress"] else meta["help"]
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if meta["negate"]:
            kw["action"] = "store_false"
        elif default is False:
            kw["action"] = "store_true"
        else:
            kw.update({k: meta[k] for k in ("type", "choices", "nargs", "const") if meta[k] is not None})
        if meta["required"]:
            kw["required"] = True
            del kw["default"]
        parser.add_argument(*_flags(f), **kw)


def from_namespace(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """``cls`` from the parsed arguments: every field with a flag that the namespace has (a ``cli=False``
    field is the caller's to convert and pass in ``overrides``); ``overrides`` win."""
    given = vars(args)
    kw = {f.name: given[f.name] for f in fields(cls) if f.name in given and f.metadata.get("cli", True)}
    kw.update(overrides)
    return cls(**kw)


__all__ = ["add_options", "from_namespace", "option"]
