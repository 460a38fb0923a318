"""Find the photos under some folders: content sniffing, skipped folders, safe symlinks.

Images are recognised by their first bytes, never by their extension. Hidden and system
folders (``.git``, ``@eaDir``, ``node_modules``, ...) and the user's ``--exclude`` globs are
skipped. Symlinks are followed, but every real directory and every real file is visited once,
so a link loop (``a/b -> a``) ends and a linked duplicate of a file is not indexed twice. A
link to a file or folder inside a walked root is skipped (the walk reaches it under its own
path); a link out of every root is followed, and what it holds is stored under the link's path.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from edgeclip.errors import InputError

__all__ = ["FileEntry", "IMAGE_SUFFIXES", "SKIPPED_DIRS", "image_format", "image_files", "walk",
           "check_roots", "count_files"]

# Folders that hold no user photos: VCS data, NAS thumbnail caches, trash, OS bookkeeping.
SKIPPED_DIRS = frozenset(
    {
        "@eaDir", "#recycle", "@Recycle", "#snapshot", "@sharebin", "$RECYCLE.BIN",
        "System Volume Information", "lost+found", "node_modules", "__pycache__",
        "__MACOSX", "Thumbs", "venv", "site-packages",
    }
)  # fmt: skip
# Files with these names are expected to be images: if they are empty or unrecognisable they
# are reported as failures. Anything else that is not an image is silently left out.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".pgm",
     ".heic", ".heif", ".avif"}
)  # fmt: skip
# Camera raw files are TIFF containers whose first image is a small preview: not the photo.
_RAW_SUFFIXES = frozenset(
    {".dng", ".cr2", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".pef", ".raf",
     ".3fr", ".erf", ".kdc", ".mos", ".iiq", ".srw"}
)  # fmt: skip
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
SNIFF_BYTES = 32


@dataclass(frozen=True)
class FileEntry:
    """A regular file found by the walk, with the stat fields incremental indexing compares."""

    path: str
    size: int
    mtime_ns: int
    dev: int
    ino: int


@lru_cache(maxsize=1)
def optional_formats() -> frozenset[str]:
    """HEIC/AVIF when this install can decode them (pillow-heif; Pillow built with libavif)."""
    found = set()
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        found.add("HEIF")
    except ImportError:
        pass
    try:
        from PIL import features

        if features.check("avif"):
            found.add("AVIF")
    except Exception:  # an old Pillow without the feature name
        pass
    return frozenset(found)


def image_format(head: bytes, name: str = "") -> str | None:
    """The image format of a file from its first bytes (``None``: not an image we index)."""
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return None if os.path.splitext(name)[1].lower() in _RAW_SUFFIXES else "TIFF"
    if head[:2] == b"BM" and len(head) >= 18 and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"  # the DIB header size pins BMP down; "BM" alone is too common
    if head[:2] in (b"P5", b"P6") and head[2:3].isspace():
        return "PPM"  # binary greymap / pixmap (Netpbm)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS and "HEIF" in optional_formats():
            return "HEIF"
        if brand in _AVIF_BRANDS and "AVIF" in optional_formats():
            return "AVIF"
    return None


def _is_hidden_or_system(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_DIRS


def _excluded(path: str, name: str, root: str, excludes: tuple[str, ...]) -> bool:
    """Whether a glob matches the entry's name, its path under the indexed folder (also with a
    leading separator, so ``*/tmp/*`` matches ``tmp/`` at the top), or, for an absolute glob
    only, its absolute path: a relative glob never looks above the indexed folder, so
    ``*/tmp/*`` does not exclude a whole library that lives under ``/tmp``."""
    rel = os.path.relpath(path, root)
    return any(
        fnmatch.fnmatch(path, g) if os.path.isabs(g)
        else fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g)
        or fnmatch.fnmatch(os.sep + rel, g)
        for g in excludes
    )  # fmt: skip


def check_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute paths of the folders to walk; a clear error for one that is not a folder."""
    out = []
    for r in roots:
        path = os.path.abspath(os.path.expanduser(os.fspath(r)))
        if not os.path.exists(path):
            raise InputError(f"cannot index '{r}': no such directory; check the path.")
        if not os.path.isdir(path):
            raise InputError(
                f"cannot index '{r}': it is a file, not a directory; pass the folder that holds "
                "it, or add single files with Index.add()."
            )
        if not storable(path):
            raise InputError(f"cannot index '{printable(path)}': {_NOT_UTF8}.")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"cannot index '{r}': permission denied; check its permissions.")
        out.append(path)
    return out


def walk(
    roots: Iterable[str], excludes: Iterable[str] = (), errors: list[str] | None = None,
    unlisted: list[str] | None = None,
) -> Iterator[FileEntry]:
    """Every regular file under ``roots`` (absolute), depth first, in sorted order per folder
    and the roots in order of their real paths.

    ``errors`` collects a message per folder that could not be listed and per name the index
    cannot store; ``unlisted`` those folders' paths (the walk goes on without them).
    """
    # Roots in the order of their real paths, so a folder reachable from two roots (one of
    # them given through a symlink) is always stored under the same path, whatever order
    # they were given in: an enclosing folder sorts before everything inside it.
    excludes = tuple(excludes)
    roots = sorted(roots, key=lambda r: (os.path.realpath(r), r))
    real_roots = tuple(os.path.realpath(r) for r in roots)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for root in roots:
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen_dirs:
                    continue  # a symlink loop, or a folder reached twice through links
                seen_dirs.add((st.st_dev, st.st_ino))
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                if errors is not None:
                    errors.append(f"{printable(folder)}: cannot list it ({e.strerror or e}); "
                                  "check its permissions or mount, then index again")  # fmt: skip
                if unlisted is not None:
                    unlisted.append(folder)
                continue
            subdirs = []
            for entry in entries:
                found = _classify(entry, root, real_roots, excludes, seen_files)
                if found is not None and not storable(entry.path):
                    if errors is not None:
                        errors.append(not_storable(entry.path))
                    continue
                if isinstance(found, FileEntry):
                    yield found
                elif found is not None:
                    subdirs.append(found)
            stack.extend(reversed(subdirs))


def _classify(
    entry: os.DirEntry, root: str, roots: tuple[str, ...], excludes: tuple[str, ...], seen_files: set
) -> FileEntry | str | None:
    """A file to yield, a folder path to descend into, or None to skip the entry."""
    if _is_hidden_or_system(entry.name) or (
        excludes and _excluded(entry.path, entry.name, root, excludes)
    ):
        return None
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return None  # a dangling symlink, or a file gone since the listing
    if stat.S_ISDIR(st.st_mode):
        # A link to a folder inside a walked root is skipped like a link to a file: the walk
        # reaches that folder under its own path. Followed, it would be stored under the
        # link's name, and the real folder then skipped as already seen.
        if entry.is_symlink() and inside(os.path.realpath(entry.path), roots):
            return None
        return entry.path
    if not stat.S_ISREG(st.st_mode):
        return None
    if entry.is_symlink() or st.st_nlink > 1:
        # One real file, several names: keep the first. A link to a file inside a walked root
        # is skipped outright, since the walk reaches that file under its own name. Only these
        # files are remembered, so memory stays small on a million plain files.
        key = (st.st_dev, st.st_ino)
        if key in seen_files or (entry.is_symlink() and inside(os.path.realpath(entry.path), roots)):
            return None
        seen_files.add(key)
    return FileEntry(entry.path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def storable(path: str) -> bool:
    """Whether the index can store this name: SQLite text is UTF-8, and a name that is not
    valid UTF-8 reaches Python with surrogate escapes that no UTF-8 encoder accepts."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Control characters in a name, shown as escapes: raw, a newline splits one name over two lines
# and an ESC sequence in a name would drive the terminal it is printed to.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def printable(path: str) -> str:
    """``path`` with the bytes of a non-UTF-8 name and control characters (newline, tab, ESC)
    shown as escapes, safe to print anywhere."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(_CONTROLS)


_NOT_UTF8 = ("the name is not valid UTF-8, so the index cannot store it; rename it (for "
             "example: convmv -f latin1 -t utf-8 --notest -r FOLDER) and index again")  # fmt: skip


def not_storable(path: str) -> str:
    return f"{printable(path)}: {_NOT_UTF8}"


def inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def count_files(roots: Iterable[str], excludes: Iterable[str], stop) -> Iterator[int]:
    """Running count of the files ``walk`` will yield (for a progress total); ``stop()`` ends it."""
    n = 0
    for n, _ in enumerate(walk(roots, excludes), 1):
        if stop():
            return
        if n % 1000 == 0:
            yield n
    yield n


def image_files(folder: str | os.PathLike, errors: list[str] | None = None) -> list[str]:
    """The images under ``folder`` as ``edgeclip index`` finds them, in walk order: files whose
    first bytes are an image, and files named like one (so a broken one is reported by whoever
    reads it, not left out); hidden and system folders skipped. ``errors`` as in ``walk``."""
    found = []
    for entry in walk([os.path.abspath(os.fspath(folder))], errors=errors):
        if os.path.splitext(entry.path)[1].lower() in IMAGE_SUFFIXES:
            found.append(entry.path)
            continue
        try:
            with open(entry.path, "rb") as fh:
                head = fh.read(SNIFF_BYTES)
        except OSError:
            continue
        if image_format(head, entry.path):
            found.append(entry.path)
    return found
