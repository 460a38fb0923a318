"""Where a bundle is written: checking ``-o`` before any work, and the one atomic swap.

``--overwrite`` replaces a bundle (a folder whose ``manifest.json`` is an edgeclip manifest) and
nothing else: pointed at a photo folder, a checkpoint, a web project with its own
``manifest.json`` or a file by mistake, it refuses instead of deleting it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgeclip.bundle import FORMAT, MANIFEST
from edgeclip.errors import InputError
from edgeclip.scratch import leftovers, scratch_dir

__all__ = ["check_output", "place_bundle", "staging_dir", "sweep_stale"]


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _why_not_bundle(path: Path) -> str | None:
    """None for an edgeclip bundle; else why not (``manifest.json`` is a common file name)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST}"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {MANIFEST} is not readable JSON"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"its {MANIFEST} is not an edgeclip manifest"
    return None


def _refuse_non_bundle(out: Path) -> None:
    why = _why_not_bundle(out) if out.is_dir() and not _is_empty_dir(out) else None
    if why:
        raise InputError(
            f"{out} exists and is not an edgeclip bundle ({why}); --overwrite replaces "
            "only bundles. Choose another output folder, or remove this one yourself."
        )
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{out} exists and is a file, not a bundle folder; choose another output path."
        )


def check_output(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved output folder, or ``InputError`` if it cannot or must not be written."""
    if not str(out_dir).strip():
        raise InputError("the output folder is an empty string; give a path (-o BUNDLE_DIR).")
    out = Path(out_dir).expanduser().resolve()
    if out.parent.is_dir():
        sweep_stale(out)  # first: a bundle a killed swap moved aside is back before the checks
    _refuse_non_bundle(out)
    if out.exists() and not _is_empty_dir(out) and not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, ...
        raise InputError(
            f"cannot create the folder {out.parent} for the bundle ({exc.strerror or exc}); "
            "choose an output path in a writable folder."
        ) from exc
    return out


def sweep_stale(out: Path) -> None:
    """Remove what killed runs left beside ``out`` (a half-built ``.partial-`` folder; a swap's
    ``.old-`` folder, whose previous bundle goes back in place when ``out`` is gone)."""
    for kind in ("partial", "old"):
        for folder in leftovers(out.parent, out.name, kind):
            previous = folder / "old"
            try:
                if kind == "old" and not out.exists() and (previous / MANIFEST).is_file():
                    os.replace(previous, out)  # killed mid-swap: the previous bundle comes back
            except OSError:
                continue  # best effort: a folder we cannot change is left as it is
            shutil.rmtree(folder, ignore_errors=True)


def staging_dir(out: Path) -> Path:
    """A hidden sibling of ``out`` to build in (``InputError`` if the folder is not writable);
    what killed conversions left beside ``out`` is removed first."""
    try:
        sweep_stale(out)
        staging = scratch_dir(out.parent, out.name, "partial")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; a bundle is meant to be shared
    except OSError as exc:
        raise InputError(
            f"cannot write in {out.parent} ({exc.strerror or exc}); choose an output path in a "
            "writable folder."
        ) from exc
    return staging


def place_bundle(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``; an existing bundle is swapped out only once all is written."""
    if not out.exists() or _is_empty_dir(out):
        os.replace(staging, out)  # rename(2) replaces an empty directory
        return
    _refuse_non_bundle(out)  # checked again: the folder may have changed during the conversion
    if not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    trash = scratch_dir(out.parent, out.name, "old")
    os.replace(out, trash / "old")
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(trash / "old", out)  # put the previous bundle back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
