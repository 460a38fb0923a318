"""What counts as text with nothing in it, for every entry point (library, CLI, serve, index)."""

from __future__ import annotations


def is_visible(ch: str) -> bool:
    """A character that shows: not whitespace, not invisible (NUL, BOM, a zero-width space)."""
    return ch.isprintable() and not ch.isspace()


def is_blank(text: str) -> bool:
    """Nothing to embed: empty, or only whitespace and invisible characters (NUL, BOM, a
    zero-width space, ...), which the BPE would still turn into tokens of nothing visible."""
    return not any(map(is_visible, text))


def visible_start(text: str, scan: int = 1024) -> str:
    """``text`` from its first visible character among the first ``scan`` ("" if none)."""
    return next((text[i:] for i, ch in enumerate(text[:scan]) if is_visible(ch)), "")
