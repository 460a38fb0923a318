"""``edgeclip search``'s plain outputs: scored lines for people, bare paths for programs.

People get names with control characters escaped (``printable``): a newline would split one name
over two lines, and an ESC sequence in a name would drive the terminal. Programs get the raw
names, one a line or NUL-ended (``--null``).
"""

from __future__ import annotations

import sys
from typing import Any

from .walk import printable

__all__ = ["print_hits", "print_paths"]


def print_hits(hits: list[Any], *, paths: bool = False, null: bool = False) -> None:
    """``score  path`` lines, or with ``paths``/``null`` the paths alone."""
    if paths or null:
        print_paths(hits, null)
        return
    for h in hits:
        print(f"{h.score:.4f}  {printable(h.path)}")


def print_paths(hits: list[Any], null: bool) -> None:
    """The paths alone, raw for the program they are piped to. One per line cannot hold a name
    with a newline (it would read as two paths, maybe of other files): those are left out and
    named on stderr, unless ``--null`` ends each path with NUL, as ``find -print0`` does."""
    if null:
        sys.stdout.write("".join(f"{h.path}\0" for h in hits))
        return
    for h in hits:
        if "\n" not in h.path:
            print(h.path)
    for h in hits:
        if "\n" in h.path:
            print(f"edgeclip search: left out {printable(h.path)}: its name holds a newline, so one "
                  "path a line would read as two; use --null (with xargs -0) or --json.",
                  file=sys.stderr)  # fmt: skip
