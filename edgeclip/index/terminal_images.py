"""Inline previews for ``edgeclip search --preview``: each hit's thumbnail drawn in the terminal,
as rclip's ``--preview`` does, through the two image protocols terminals speak:

* ``kitty``: the kitty graphics protocol (kitty, Ghostty, WezTerm, Konsole), PNG payloads sent
  in 4096-byte chunks (``ESC _G ... ESC \\``);
* ``iterm``: iTerm2's inline images (iTerm2, WezTerm, mintty), one ``ESC ] 1337 ; File=`` escape.

The protocol is found from the environment; ``--preview kitty`` or ``--preview iterm`` names it
(over ssh, or in tmux with passthrough, where the variables do not arrive).
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Mapping
from typing import Any

from edgeclip.errors import EdgeclipError, InputError

__all__ = ["PROTOCOLS", "PREVIEW_PX", "choose_protocol", "detect", "escape", "print_previews"]

PROTOCOLS = ("kitty", "iterm")
PREVIEW_PX = 192  # longest side of a preview
_KITTY_CHUNK = 4096


def choose_protocol(asked: str, conflicting_flag: str | None) -> str:
    """``--preview [PROTOCOL]``'s protocol, refused before the model loads if it cannot work."""
    if conflicting_flag:
        raise InputError(f"--preview draws images; it does not go with {conflicting_flag}.")
    if asked != "auto":
        return asked
    found = detect(os.environ) if sys.stdout.isatty() else None
    if found is None:
        where = ("this terminal is not one known to draw images" if sys.stdout.isatty()
                 else "the output is not a terminal")  # fmt: skip
        raise InputError(f"--preview: {where}; name its protocol (--preview kitty for kitty, "
                         "Ghostty, WezTerm, Konsole; --preview iterm for iTerm2), or use --paths "
                         "| xargs feh.")  # fmt: skip
    return found


def print_previews(hits: list[Any], protocol: str, max_pixels: int) -> None:
    """Each hit's score and path, then its thumbnail; a photo that cannot be read says why."""
    from .thumbnails import render_thumbnail
    from .walk import printable

    for hit in hits:
        print(f"{hit.score:.4f}  {printable(hit.path)}", flush=True)
        try:
            image = render_thumbnail(hit.path, PREVIEW_PX, max_pixels, "PNG" if protocol == "kitty" else "JPEG")
        except (OSError, EdgeclipError) as exc:  # gone or changed since it was indexed
            print(f"  (no preview: {exc})", flush=True)
            continue
        sys.stdout.write(escape(image, protocol, os.path.basename(hit.path)))
        sys.stdout.flush()


def detect(env: Mapping[str, str]) -> str | None:
    """The image protocol this terminal speaks, from its environment; None if not known."""
    if env.get("KITTY_WINDOW_ID") or "kitty" in env.get("TERM", "") or env.get("TERM_PROGRAM") == "ghostty":
        return "kitty"
    if env.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    return None


def escape(image: bytes, protocol: str, name: str = "") -> str:
    """The escape sequence that draws ``image`` (PNG for kitty; any format for iTerm2),
    followed by a newline so the next line starts below it."""
    data = base64.b64encode(image).decode("ascii")
    if protocol == "iterm":
        label = base64.b64encode(name.encode("utf-8", "replace")).decode("ascii")
        return f"\033]1337;File=name={label};size={len(image)};inline=1:{data}\a\n"
    if protocol != "kitty":
        raise ValueError(f"unknown image protocol {protocol!r}; use one of {PROTOCOLS}")
    chunks = [data[i : i + _KITTY_CHUNK] for i in range(0, len(data), _KITTY_CHUNK)] or [""]
    parts = []
    for i, chunk in enumerate(chunks):
        more = int(i < len(chunks) - 1)
        head = f"a=T,f=100,m={more}" if i == 0 else f"m={more}"
        parts.append(f"\033_G{head};{chunk}\033\\")
    return "".join(parts) + "\n"
