"""Command-line flags generated from the option dataclasses: field ``top_k`` <-> flag ``--top-k``,
help, default, type and choices from the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def _tuple_of(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(t) for t in str(text).split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(_show, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_flags(p, cls, skip: typing.Collection[str] = (), only: typing.Collection[str] | None = None) -> None:
    """One flag per field of the dataclass ``cls``, in field order: help, default, type, choices
    and metavar from the field (``metadata``: ``help``, ``choices``, ``parse`` (the flag's text ->
    the value), ``metavar``).  A bool field is a ``store_true`` flag; the help gets
    `` (default: ...)`` unless the default is None or the text says it (``default`` in it)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, default, meta = hints[f.name], f.default, f.metadata
        text = meta.get("help", "")
        if kind is bool:
            p.add_argument(flag, action="store_true", dest=f.name, help=text)
            continue
        kw: dict = {"dest": f.name, "default": default}
        if isinstance(default, tuple):
            kw["type"] = _tuple_of(type(default[0]) if default else str)
        elif "parse" in meta:
            kw["type"] = meta["parse"]
        elif "choices" not in meta:
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            if base[0] in (int, float):
                kw["type"] = base[0]
        kw.update({k: meta[k] for k in ("choices", "metavar") if k in meta})
        shown = "" if default is None or "default" in text else f" (default: {_show(default)})"
        p.add_argument(flag, help=text + shown, **kw)


def from_flags(cls, args: argparse.Namespace, **extra):
    """The dataclass ``cls`` built from its flags in ``args``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}, **extra)


def split_names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None
