"""Whether a file in the Hugging Face cache is the one the zoo or the hub says it is: its size
on every load, its content once (a marker in ``.edgeclip-verified/`` remembers the sha256 for
that size and mtime); a bad copy is deleted so the next fetch downloads it again."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .hub_errors import DEFAULT_ENDPOINT
from .verified import is_verified, remember

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MARKER_DIR = ".edgeclip-verified"


def _hash_file(path: Path, want_git_sha1: bool) -> tuple[str, str | None]:
    """sha256 of the file and, if asked, its git blob sha1 (the etag of a non-LFS hub file)."""
    sha256 = hashlib.sha256()
    sha1 = None
    if want_git_sha1:
        sha1 = hashlib.sha1()
        sha1.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(block)
            if sha1 is not None:
                sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


def _discard(ctx: Any, pointer: Path, blob: Path, marker: Path) -> str:
    """Delete a bad cached file (its snapshot link, blob, marker); say what became of it."""
    for p in (pointer, blob, marker):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return (
                f"It could not be deleted ({exc.strerror}: {p}): delete {blob} and {pointer} "
                "yourself, or set HF_HUB_CACHE to a writable folder, then fetch again."
            )
    return f"The file was deleted from {ctx.folder}."


def verify_cached(ctx: Any, spec: dict[str, Any], pointer: Path) -> None:
    """Check size always, content once (then a marker remembers it); delete and raise on mismatch."""
    blob = pointer.resolve()
    marker = ctx.folder / MARKER_DIR / blob.name
    stat = blob.stat()
    size = stat.st_size
    want_size, want_sha = spec.get("size"), spec.get("sha256")
    if want_size is not None and size != want_size:
        fate = _discard(ctx, pointer, blob, marker)
        raise IntegrityError(
            f"{ctx.model}: {ctx.where(spec['path'])} in the cache has {size} bytes but the zoo "
            f"expects {want_size}. {fate} Fetch again to re-download it{_needs_network()}."
        )
    if is_verified(marker, stat, want_sha):
        return
    # The blob's name is the hub's etag: sha256 for LFS files, git sha1 for small ones.
    etag = blob.name if blob.parent.name == "blobs" else None
    git_etag = etag if etag and _COMMIT.fullmatch(etag) else None
    sha256, actual_sha1 = _hash_file(blob, want_git_sha1=want_sha is None and git_etag is not None)
    actual = sha256
    if want_sha is not None:
        expected, against, ok = want_sha, "the sha256 pinned in the zoo", actual == want_sha
    elif etag and _SHA256.fullmatch(etag):
        expected, against, ok = etag, "the hub's LFS etag", actual == etag
    elif git_etag is not None:
        expected, against, ok = git_etag, "the hub's git blob sha1 (etag)", actual_sha1 == git_etag
        actual = f"{sha256} (git sha1 {actual_sha1})"
    else:
        expected, against, ok = None, "nothing (no pin, no etag)", True
    if not ok:
        fate = _discard(ctx, pointer, blob, marker)
        raise IntegrityError(
            f"{ctx.model}: {ctx.where(spec['path'])} failed verification against {against}: "
            f"expected {expected}, got sha256 {actual}. {fate} Fetch again{_needs_network()}; if "
            f"it recurs, a proxy or mirror (HF_ENDPOINT={os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT}) is serving altered bytes."
        )
    remember(marker, stat, sha256)


def _needs_network() -> str:
    from .hub import is_offline

    return " (that needs the network: unset HF_HUB_OFFLINE)" if is_offline() else ""
