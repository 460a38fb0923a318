"""What counts as text with nothing in it, for every entry point (library, CLI, serve, index)."""

from __future__ import annotations


def is_blank(text: str) -> bool:
    """Nothing to embed: empty, or only whitespace and invisible characters (NUL, BOM, a
    zero-width space, ...), which the BPE would still turn into tokens of nothing visible."""
    return not any(ch.isprintable() and not ch.isspace() for ch in text)
