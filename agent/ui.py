"""Terminal output shared by the commands."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when the output is a pipe or file."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=max(c.width, 160))


def write_error(path, e: OSError) -> str:
    """One line for an OSError on writing ``path``: what is wrong and what to do."""
    from pathlib import Path

    p = Path(path)
    if isinstance(e, FileNotFoundError):
        why = f"no directory {p.parent} (create it first)"
    elif isinstance(e, NotADirectoryError):
        why = f"{p.parent} is not a directory"
    elif isinstance(e, IsADirectoryError):
        why = "it is a directory"
    elif isinstance(e, PermissionError):
        why = f"permission denied (can this user write to {p.parent}?)"
    else:
        why = e.strerror or str(e)
    return f"cannot write {p}: {why}"


# -- tables that fit the terminal ------------------------------------------------------------------

#: A column with this ``keep`` is never left out.
ALWAYS = 100


@dataclass(frozen=True)
class Column:
    """A table column. ``keep``: how long it stays when the table must narrow (higher stays
    longer; among equals the rightmost goes first)."""

    header: str
    justify: str = "left"
    keep: int = 0
    min_width: int | None = None


def measure(table: Table) -> int:
    """The columns ``table`` needs to show every cell whole."""
    con = Console(width=10_000, file=io.StringIO())
    return Measurement.get(con, con.options.update(max_width=10_000), table).maximum


def build_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, total: Sequence[str] | None = None,
                caption: str | None = None, **table_kw: Any) -> Table:
    """A rich Table of these columns and rows (cells whole: never wrapped or cut), with a bold
    ``total`` row below a rule when given."""
    t = Table(caption=caption, caption_justify="left", **table_kw)
    for c in columns:
        t.add_column(c.header, justify=c.justify, no_wrap=True, min_width=c.min_width)
    for r in rows:
        t.add_row(*r)
    if total is not None:
        t.add_section()
        t.add_row(*total, style="bold")
    return t


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None, *,
              total: Sequence[str] | None = None, caption: str | None = None,
              hint: str = "--wide shows them, --json every field", **table_kw: Any) -> Table | str:
    """The table at most ``width`` columns wide (None: every column, whatever it needs): the
    columns that matter least are left out first, and the caption says which and how to see
    them. Where even the columns that are always kept do not fit, one record per block
    instead (a string), so that no cell is ever cut to "…"."""
    keep = list(range(len(columns)))
    order = sorted((i for i, c in enumerate(columns) if c.keep < ALWAYS), key=lambda i: (columns[i].keep, -i))
    dropped: list[str] = []

    def table() -> Table:
        note = (f"{len(dropped)} column(s) left out at {width} columns: {', '.join(dropped)}; {hint}"
                if dropped else None)
        return build_table([columns[i] for i in keep], [[r[i] for i in keep] for r in rows],
                           total=None if total is None else [total[i] for i in keep],
                           caption="\n".join(x for x in (caption, note) if x) or None, **table_kw)

    t = table()
    while width is not None and measure(t) > width:
        if not order:
            return records(columns, rows, total=total, caption=caption)
        keep.remove(order.pop(0))
        dropped[:] = [c.header for i, c in enumerate(columns) if i not in keep]  # in table order
        t = table()
    return t


def records(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, total: Sequence[str] | None = None,
            caption: str | None = None) -> str:
    """One record per block, ``header: value`` a line, for terminals too narrow for a table."""
    wide = max(len(c.header) for c in columns)
    blocks = []
    for r in [*rows, *([total] if total is not None else [])]:
        blocks.append("\n".join(f"{c.header:>{wide}}: {Text.from_markup(v).plain}" for c, v in zip(columns, r)))
    return "\n\n".join(blocks) + (f"\n\n{Text.from_markup(caption).plain}" if caption else "")


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, wide: bool = False,
                **kw: Any) -> None:
    """Print the table on standard output: fitted to a terminal's width, whole (every column at
    the width it needs) with ``wide`` or into a pipe or file."""
    con = Console()
    if wide or not con.is_terminal:
        t = fit_table(columns, rows, None, **kw)
        Console(width=max(measure(t), con.width)).print(t)
        return
    out = fit_table(columns, rows, con.width, **kw)
    if isinstance(out, str):
        con.print(out, markup=False, highlight=False)
    else:
        con.print(out)
