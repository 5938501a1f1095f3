"""Terminal output shared by the commands."""

from __future__ import annotations

from rich.console import Console


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
