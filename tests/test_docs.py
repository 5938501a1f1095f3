"""The design lives in the repository: docs/architecture.md names only files that exist, and no
file points outside the checkout (a clone has only its own files)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}
TEXT = {".py", ".md", ".cfg", ".toml", ".service", ".sh", ".txt", ""}


def _repo_files():
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT)
        if any(part in SKIP or part.endswith(".egg-info") for part in rel.parts):
            continue
        if p.is_file() and p.suffix in TEXT:
            yield rel, p


def test_no_file_refers_outside_the_checkout():
    needle = "../" + "shared"  # spelled apart so that this file does not match itself
    hits = [str(rel) for rel, p in _repo_files() if needle in p.read_text(errors="replace")]
    assert hits == []


def test_architecture_names_only_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:meterd|agent|probes|kernels|reports|collector|tests|bench|docs|deploy)/"
                           r"[\w./]+\.\w+)`", text))
    links = {"docs/" + m for m in re.findall(r"\]\(([\w-]+\.md)\)", text)}
    assert len(paths) > 20  # the map cites the code it describes
    missing = sorted(p for p in paths | links if not (ROOT / p).exists())
    assert missing == []


def test_architecture_covers_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for section in ("## Layout", "## Data flow", "## Units and money", "## The cost model", "## Wire format",
                    "## Storage", "## Shipping rules", "## Hardware boundary", "## Errors"):
        assert section in text, section
    for pkg in ("meterd", "probes", "kernels", "agent", "reports", "collector"):
        assert f"| `{pkg}/` | `meterd" in text or f"| `{pkg}/` | `{pkg}`" in text, pkg
