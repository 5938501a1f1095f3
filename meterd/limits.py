"""Edge validation shared by everything that takes input from outside (the push endpoint, the
collector's ingest and query strings, scraped expositions, config files). Pure.

- Text must be valid UTF-8 without lone surrogates: JSON's ``"\\ud800"`` escape decodes to a
  Python ``str`` that no UTF-8 encoder (SQLite's included) will take, so it is refused here,
  where the client can still be told, not at commit time.
- Whole numbers (tokens, micro-units) lie in ``0 .. 2**53``: beyond that a float (JSON, PromQL)
  no longer holds every integer, and sums of them overflow SQLite's 64-bit INTEGER.
- Nesting is bounded before parsing, so a body of ``[[[[...`` never reaches the JSON parser's
  recursion limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from meterd.errors import InputError  # input refused at the edge: one line for whoever sent it

#: The largest whole number every layer holds exactly (IEEE double, JSON, SQLite INTEGER sums).
MAX_SAFE_INT = 2**53
#: JSON bodies and TOML files deeper than this are refused before they are parsed.
MAX_NESTING = 32


__all__ = ["InputError", "MAX_NESTING", "MAX_SAFE_INT", "check_text", "dumps_line", "has_lone_surrogate_escape",
           "check_strings", "loads_bounded",
           "nesting_depth", "safe_int_problem", "text_problem"]


def text_problem(s: str) -> str | None:
    """Why ``s`` cannot be stored as text, or None. (Lone surrogates, NUL.)"""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a lone surrogate)"
    if "\x00" in s:
        return "contains a NUL character"
    return None


def check_text(s: str, what: str) -> str:
    problem = text_problem(s)
    if problem:
        raise InputError(f"{what} {problem}")
    return s


def safe_int_problem(v: Any) -> str | None:
    """Why ``v`` is not a whole number in 0..2**53, or None."""
    if isinstance(v, bool) or not isinstance(v, int):
        return "must be a whole number"
    if not 0 <= v <= MAX_SAFE_INT:
        return f"must be between 0 and 2^53 ({MAX_SAFE_INT:,})"
    return None


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")


def nesting_depth(body: bytes) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (strings skipped), without parsing it."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", body))
    depth = deepest = 0
    for c in brackets:
        if c in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = re.compile(rb"(?<!\\)(?:" + _HIGH + rb"(?!" + _LOW + rb")|(?<!" + _HIGH + rb")" + _LOW + rb")")


def has_lone_surrogate_escape(body: bytes) -> bool:
    """Whether a JSON text holds a ``\\uD800``-style escape that is not half of a pair: it
    would decode to a string no UTF-8 encoder (nor SQLite, nor PostgreSQL) takes. (An escaped
    backslash right before the ``u`` may be flagged too: such a text is refused, never stored
    wrong.)"""
    return b"\\u" in body and _LONE_SURROGATE.search(body) is not None


def loads_bounded(body: bytes, max_depth: int = MAX_NESTING) -> Any:
    """JSON from untrusted bytes: UTF-8 (no lone surrogates, in the bytes or as ``\\u``
    escapes), nesting at most ``max_depth``, integers of at most 4,300 digits. Raises
    :class:`InputError` with one line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the body is not UTF-8 text (byte {e.start})") from None
    depth = nesting_depth(body)
    if depth > max_depth:
        raise InputError(f"the body is nested {depth} levels deep; at most {max_depth}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"the body is not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits
        raise InputError(f"the body is not acceptable JSON: {str(e).splitlines()[0][:120]}") from None
    check_strings(doc)
    return doc


def check_strings(doc: Any) -> None:
    """Every string in ``doc`` (keys included) is storable text. Iterative."""
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if text_problem(v):
                raise InputError(f"the body holds a string that {text_problem(v)}: {json.dumps(v)[:60]}")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def dumps_line(v: Any, limit: int = 40) -> str:
    """A value for an error message: JSON, cut short, never failing."""
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"
