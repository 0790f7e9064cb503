"""TLA+ values as TLC prints them, and back.

TLC prints the states of a counterexample as TLA+ expressions.  This module
turns such an expression into a Python value and a Python value into a TLA+
expression:

    =====================================  ==================================
    TLA+ (as TLC prints it)                Python
    =====================================  ==================================
    ``-3``                                 ``int``
    ``TRUE``, ``FALSE``                    ``bool``
    ``"a\\"b"``                            ``str``
    ``<<1, 2>>``, ``<< >>``                ``tuple``
    ``[a |-> 1, b |-> <<>>]``              ``dict`` with ``str`` keys
    ``(0 :> 5 @@ 1 :> 0)``                 ``dict``
    ``{1, 2}``, ``1..3``                   ``frozenset``
    a model value, e.g. ``m1``             :class:`ModelValue` (a ``str``)
    =====================================  ==================================

A record is a function whose domain is a set of strings, so both print forms
give a ``dict``, and :func:`to_tla` picks the record form whenever every key
is an identifier.  TLC prints a function whose domain is ``1..n`` as a
sequence; :func:`normalize` applies the same rule to a Python value so that
values built by hand compare equal to the ones parsed from TLC's output.

The trace checker writes implementation states into a TLA+ module with
:func:`to_tla`, so the inverse must be exact for every value it accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ModelValue", "TLAValueError", "parse", "to_tla", "normalize"]


class ModelValue(str):
    """A TLC model value: an uninterpreted constant such as ``m1``.

    It is a ``str`` so that it can be compared with and used as one, but
    :func:`to_tla` writes it bare (``m1``) where a plain string would be
    quoted (``"m1"``).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ModelValue({str.__repr__(self)})"


class TLAValueError(ValueError):
    """The text is not a TLA+ value in the form TLC prints it."""


# The lexer.  Order matters: longer operators before their prefixes.
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<int>-?\d+)
  | (?P<op><<|>>|\|->|:>|@@|\.\.|[\[\](){},:])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# TLA+ reserved words may not be record field names written bare.
_RESERVED = frozenset(
    """ASSUME ASSUMPTION AXIOM BOOLEAN CASE CHOOSE CONSTANT CONSTANTS ELSE EXCEPT
    EXTENDS FALSE IF IN INSTANCE LET LOCAL MODULE OTHER STRING SUBSET THEN THEOREM
    TRUE UNCHANGED UNION VARIABLE VARIABLES WITH ENABLED DOMAIN LAMBDA""".split()
)

_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "f": "\f"}
_ESCAPE = {v: "\\" + k for k, v in _UNESCAPE.items()}


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    """Yield (kind, text, offset) for each token of *text*, skipping blanks."""
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise TLAValueError(f"unexpected character {text[pos]!r} at offset {pos}: {text!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            yield kind, m.group(), pos
        pos = m.end()


def _unquote(literal: str) -> str:
    """Turn a TLA+ string literal (with its quotes) into the string it denotes."""
    out = []
    chars = iter(literal[1:-1])
    for ch in chars:
        if ch == "\\":
            esc = next(chars)
            if esc not in _UNESCAPE:
                raise TLAValueError(f"unknown escape \\{esc} in {literal}")
            out.append(_UNESCAPE[esc])
        else:
            out.append(ch)
    return "".join(out)


class _Parser:
    """A recursive-descent parser over the token list of one value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.i = 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.toks[j][1] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> tuple[str, str, int]:
        if self.i >= len(self.toks):
            raise TLAValueError(f"unexpected end of value: {self.text!r}")
        tok = self.toks[self.i]
        if expected is not None and tok[1] != expected:
            raise TLAValueError(
                f"expected {expected!r} at offset {tok[2]}, found {tok[1]!r}: {self.text!r}"
            )
        self.i += 1
        return tok

    def value(self) -> Any:
        kind, text, _ = self.take()
        if kind == "int":
            first: Any = int(text)
            if self.peek() == "..":  # an interval a..b, e.g. 1..3
                self.take("..")
                _, hi, _ = self.take()
                return frozenset(range(first, int(hi) + 1))
            return first
        if kind == "string":
            return _unquote(text)
        if kind == "ident":
            if text == "TRUE":
                return True
            if text == "FALSE":
                return False
            return ModelValue(text)
        if text == "<<":
            return tuple(self.items(">>"))
        if text == "{":
            return frozenset(self.items("}"))
        if text == "[":
            return self.record()
        if text == "(":
            return self.function()
        raise TLAValueError(f"unexpected {text!r} at offset {self.toks[self.i - 1][2]}")

    def items(self, close: str) -> list[Any]:
        """Comma-separated values up to and including the token *close*."""
        out: list[Any] = []
        if self.peek() == close:
            self.take()
            return out
        while True:
            out.append(self.value())
            if self.peek() == ",":
                self.take()
                continue
            self.take(close)
            return out

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = _FrozenDict()
        while True:
            kind, name, off = self.take()
            if kind != "ident":
                raise TLAValueError(f"expected a field name at offset {off}: {self.text!r}")
            self.take("|->")
            out[name] = self.value()
            if self.peek() == ",":
                self.take()
                continue
            self.take("]")
            return out

    def function(self) -> dict[Any, Any]:
        out: dict[Any, Any] = _FrozenDict()
        while True:
            key = self.value()
            self.take(":>")
            out[key] = self.value()
            if self.peek() == "@@":
                self.take()
                continue
            self.take(")")
            return out


class _FrozenDict(dict):
    """A dict that can be a set member or a key, as TLA+ functions can.

    :func:`parse` and :func:`normalize` build every record and function as
    one; it compares equal to a plain dict with the same items.  Do not
    mutate it once it is in a set.
    """

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def parse(text: str) -> Any:
    """Return the Python value of the TLA+ value *text*, as TLC prints it.

    Records and functions come back as dicts that are also hashable, so they
    can sit in sets.  Raises :class:`TLAValueError` (a ``ValueError``) when
    *text* is not one value of the forms in the module docstring.
    """
    p = _Parser(text)
    value = p.value()
    if p.i != len(p.toks):
        raise TLAValueError(f"trailing text at offset {p.toks[p.i][2]}: {text!r}")
    return value


def _quote(s: str) -> str:
    return '"' + "".join(_ESCAPE.get(ch, ch) for ch in s) + '"'


def _is_field(key: Any) -> bool:
    return (
        type(key) is str and _IDENT.match(key) is not None and key not in _RESERVED
    )


def _sort_key(value: Any) -> tuple[int, Any]:
    """An order for writing set members and function keys deterministically."""
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, to_tla(value))


def to_tla(value: Any) -> str:
    """Return *value* written as a TLA+ expression that TLC can evaluate.

    Accepts ``bool``, ``int``, ``str``, :class:`ModelValue`, ``tuple`` and
    ``list`` (sequences), ``frozenset`` and ``set``, and ``dict`` (a record
    when every key is an identifier string, else a function ``k :> v @@ ...``;
    the empty dict is the empty function ``<<>>``).  Anything else raises
    ``TypeError``.  The function form uses ``:>`` and ``@@``, so a module
    that contains it must extend the standard module ``TLC``.
    """
    # bool before int: True is an int in Python.
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, ModelValue):
        if not _IDENT.match(value):
            raise ValueError(f"model value {value!r} is not an identifier")
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, tuple | list):
        return "<<" + ", ".join(to_tla(v) for v in value) + ">>"
    if isinstance(value, frozenset | set):
        return "{" + ", ".join(to_tla(v) for v in sorted(value, key=_sort_key)) + "}"
    if isinstance(value, Mapping):
        if not value:
            return "<<>>"
        keys = sorted(value, key=_sort_key)
        if all(_is_field(k) for k in keys):
            return "[" + ", ".join(f"{k} |-> {to_tla(value[k])}" for k in keys) + "]"
        return "(" + " @@ ".join(f"{to_tla(k)} :> {to_tla(value[k])}" for k in keys) + ")"
    raise TypeError(f"no TLA+ form for {type(value).__name__}: {value!r}")


def normalize(value: Any) -> Any:
    """Return *value* in the form :func:`parse` gives for TLC's printing of it.

    TLC prints a function with domain ``1..n`` as a sequence and the empty
    function as ``<< >>``, so such dicts become tuples; lists become tuples
    and sets frozensets, recursively.  Two values are equal in TLA+ exactly
    when their normalized forms are equal in Python.
    """
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, tuple | list):
        return tuple(normalize(v) for v in value)
    if isinstance(value, frozenset | set):
        return frozenset(normalize(v) for v in value)
    if isinstance(value, Mapping):
        keys = list(value)
        n = len(keys)
        if all(type(k) is int for k in keys) and set(keys) == set(range(1, n + 1)):
            return tuple(normalize(value[i]) for i in range(1, n + 1))
        return _FrozenDict((normalize(k), normalize(v)) for k, v in value.items())
    raise TypeError(f"no TLA+ form for {type(value).__name__}: {value!r}")
