"""``edgeclip index`` / ``search`` / ``dupes``: the command line of ``edgeclip.index.Index``.

    edgeclip index DIR... --db PATH [--model M] [--exclude GLOB] [--prune] [--hash] [--reindex]
    edgeclip index --prune --db PATH              # drop indexed files that no longer exist
    edgeclip index --forget PATH --db PATH        # drop a file or a folder from the index
    edgeclip index DIR... --watch [SECONDS]        # then a pass every SECONDS until stopped
    edgeclip search "text" --db PATH [-k 20] [--json]
    edgeclip search --image IMG --db PATH [--paths | --null | --preview]
    edgeclip dupes --db PATH [--threshold T] [--json]

Exit status: 0 ok, 1 some files could not be read (the rest are indexed), 2 an error, 130
interrupted (Ctrl-C) or 143 terminated (SIGTERM); then what was committed is kept and said.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeclipError

__all__ = ["main"]

_REPORT_LINES = 50


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None,
                   help="the index file (SQLite), e.g. photos.db (default: $EDGECLIP_DB, else "
                        "~/.local/share/edgeclip/photos.db)")  # fmt: skip
    p.add_argument("--model", default=None, help="zoo name or bundle dir (default: the index's own)")
    p.add_argument("--backend", default=None, help="onnx | openvino | litert (default: the index's)")
    p.add_argument("--precision", default=None, help="fp32 | fp16 | int8 (default: the index's)")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"edgeclip {command}", description=_DESCRIPTIONS[command])
    _model_args(p)
    if command == "index":
        p.add_argument("dirs", nargs="*", metavar="DIR", help="folders to index (recursively)")
        p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                       help="skip files/folders matching GLOB (name or path; repeatable)")
        p.add_argument("--prune", action="store_true", help="drop indexed files that no longer exist")
        p.add_argument("--forget", action="append", default=[], metavar="PATH",
                       help="drop this file, or every file under this folder, from the index "
                            "(repeatable; e.g. a drive that is gone for good)")
        p.add_argument("--hash", action="store_true",
                       help="compare content hashes instead of size + mtime (reads every file)")
        p.add_argument("--reindex", action="store_true",
                       help="drop every vector and rebuild (e.g. with another --model)")
        p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait this long for another indexer on the same --db (default: refuse)")
        p.add_argument("--no-draft", action="store_true",
                       help="decode JPEGs at full size (slower; see docs/index.md)")
        p.add_argument("--previews", action="store_true",
                       help="decode a JPEG's embedded camera preview when it is large enough "
                            "(faster; trusts that the preview matches the photo; docs/index.md)")
        p.add_argument("--batch-size", type=_positive, default=32)
        p.add_argument("--commit-every", type=_positive, default=256, metavar="FILES",
                       help="commit after this many files (a crash loses at most these)")
        p.add_argument("--workers", type=_positive, default=None, help="decode threads")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--watch", type=_seconds, nargs="?", const=60.0, default=None,
                       metavar="SECONDS", help="after the first pass, look for new and changed "
                       "photos every SECONDS (default 60) until stopped")  # fmt: skip
    if command in ("index", "search"):
        p.add_argument("--max-pixels", type=_positive, default=None,
                       help="decompression-bomb limit in pixels (default 89,478,485)")
    if command == "search":
        p.add_argument("text", nargs="?", help="what to look for")
        p.add_argument("--image", default=None, help="search by this example image instead")
        p.add_argument("-k", type=_positive, default=20, help="how many results (default 20)")
        p.add_argument("--exact", action="store_true", help="scan every vector (no HNSW graph)")
        p.add_argument("--add", action="append", default=[], metavar="TEXT_OR_IMAGE",
                       help="also look for this (words, or an image file; repeatable)")
        p.add_argument("--subtract", action="append", default=[], metavar="TEXT_OR_IMAGE",
                       help="look away from this (words, or an image file; repeatable)")
        p.add_argument("--under", default=None, metavar="DIR",
                       help="only photos under this folder")
        p.add_argument("--paths", action="store_true",
                       help="print the paths alone, one per line (for xargs, feh, ...)")
        p.add_argument("--null", action="store_true",
                       help="the paths alone, each ended by a NUL byte (for xargs -0): names "
                            "holding a newline stay whole")  # fmt: skip
        p.add_argument("--preview", nargs="?", const="auto", default=None,
                       choices=("auto", "kitty", "iterm"),
                       help="draw each hit's thumbnail in the terminal (kitty, Ghostty, WezTerm, "
                            "iTerm2); name the protocol where it is not detected (ssh, tmux)")
    elif command == "dupes":
        p.add_argument("--threshold", type=float, default=0.95, help="cosine (default 0.95)")
    return p  # fmt: skip


def _max_pixels(args: argparse.Namespace) -> int:
    from edgeclip.images import DEFAULT_MAX_PIXELS  # late: PIL is not needed for --help

    return args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds of at least 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds, a number of at least 1, got {text!r}")
    return value


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


_DESCRIPTIONS = {
    "index": "Index photo folders for search (incremental: unchanged files are skipped).",
    "search": "Search an index by text or by an example image.",
    "dupes": "List groups of near-duplicate photos in an index.",
}


def main(argv: list[str]) -> int:
    """``argv`` starts with the sub-command: ``["index", ...]``, ``["search", ...]``, ``["dupes", ...]``."""
    if not argv or argv[0] not in _DESCRIPTIONS:
        print("usage: edgeclip {index,search,dupes} ...", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    args = build_parser(command).parse_args(rest)
    try:
        _default_db(args, command)
        with _sigterm_as_interrupt():
            return {"index": _index, "search": _search, "dupes": _dupes}[command](args)
    except EdgeclipError as exc:
        print(f"edgeclip {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"edgeclip {command}: {_stop_word(exc)} (committed work is kept; run again to resume)",
              file=sys.stderr)  # fmt: skip
        return _stop_status(exc)


def _default_db(args: argparse.Namespace, command: str) -> None:
    """Without ``--db``, the user's own index (``edgeclip.paths.default_index``); ``index``
    makes its folder, the only folder edgeclip makes for an index."""
    if args.db is not None:
        return
    from edgeclip.paths import default_index

    db = default_index()
    if command == "index" and not db.parent.is_dir():
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _usage(f"cannot make {db.parent} for the index ({exc.strerror}); give "
                         "--db FILE, or set EDGECLIP_DB.") from exc  # fmt: skip
    args.db = str(db)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``systemctl stop``, ``kill``, a cron job's timeout): stopped like Ctrl-C, so the
    run says what it committed instead of dying silently mid-batch."""


def _stop_word(exc: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _stop_status(exc: BaseException) -> int:
    return 143 if isinstance(exc, Terminated) else 130  # 128 + the signal, as shells report


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _open(args: argparse.Namespace, readonly: bool, **kw: Any) -> Any:
    from .library import Index

    return Index(
        args.db, args.model, backend=args.backend, precision=args.precision,
        threads=args.threads, readonly=readonly, **kw,
    )  # fmt: skip


def _index(args: argparse.Namespace) -> int:
    if args.watch is not None and not args.dirs:
        raise _usage("--watch needs the folders to watch: edgeclip index DIR... --watch.")
    if not args.dirs and not args.prune and not args.forget:
        raise _usage("give at least one DIR to index (or --prune alone to drop vanished files).")
    ix = _open(
        args, False, reindex=args.reindex, wait=args.wait, batch_size=args.batch_size,
        workers=args.workers, draft=not args.no_draft, previews=args.previews,
        max_pixels=_max_pixels(args),
    )  # fmt: skip
    with ix:
        if args.forget:
            n = ix.remove(args.forget)
            _say(args, {"forgotten": n}, f"dropped {n} files from the index")
        if not args.dirs:
            return _prune_only(args, ix) if args.prune else 0
        from .progress import Progress

        progress = None if (args.quiet or args.json) else Progress()
        try:
            report = ix.update(args.dirs, exclude=args.exclude, prune=args.prune,
                               use_hash=args.hash, progress=progress,
                               commit_every=args.commit_every)  # fmt: skip
        except (KeyboardInterrupt, EdgeclipError) as exc:
            if progress is not None:
                progress.close()  # the bar first, so the message is not drawn over
            return _stopped(args, ix, exc)
        if progress is not None:
            progress.close()
        _print_report(args, report)
        if args.watch is not None:
            return _watch(args, ix, report)
    return 1 if report.failures or report.walk_errors else 0


def _watch(args: argparse.Namespace, ix: Any, first: Any) -> int:
    from .watch import watch

    def update() -> Any:
        # A watched folder may vanish (a USB disk pulled, a folder renamed): a later pass
        # keeps watching the others, and this one once it is back.
        return ix.update(args.dirs, exclude=args.exclude, prune=args.prune, use_hash=args.hash,
                         commit_every=args.commit_every, roots_may_vanish=True)  # fmt: skip

    try:
        return watch(update, args.watch, searchable=lambda: len(ix), first=first, as_json=args.json)
    except (KeyboardInterrupt, EdgeclipError) as exc:
        return _stopped(args, ix, exc)


def _prune_only(args: argparse.Namespace, ix: Any) -> int:
    n, kept = ix.prune_vanished()
    _say(args, {"pruned": n, "kept": kept}, f"pruned {n} files that no longer exist")
    for line in kept:
        print(f"  {line}", file=sys.stderr)
    return 1 if kept else 0


def _stopped(args: argparse.Namespace, ix: Any, exc: BaseException) -> int:
    """A run ended by Ctrl-C or an error: say what it kept and that re-running resumes."""
    stop = _stop_word(exc) if isinstance(exc, KeyboardInterrupt) else f"error: {exc}"
    print(f"edgeclip index: {stop}", file=sys.stderr)
    report = ix.last_report  # None when it stopped before embedding began (lock, model)
    if report is not None:
        try:
            total = f" ({len(ix)} photos are searchable in {ix.path})"
        except Exception:  # the index itself is what failed: say only what this run knows
            total = ""
        print(f"{report.committed} files from this run were committed{total}; run the same "
              "command again to resume: committed files are not embedded again.",
              file=sys.stderr)  # fmt: skip
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
    return _stop_status(exc) if isinstance(exc, KeyboardInterrupt) else 2


def _print_report(args: argparse.Namespace, report: Any) -> None:
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(report.summary())
    problems = report.failures + [(e, "") for e in report.walk_errors]
    if problems:
        print(f"{len(problems)} files or folders could not be read:", file=sys.stderr)
        from .walk import printable

        for path, reason in problems[:_REPORT_LINES]:
            print(f"  {printable(path)}: {reason}" if reason else f"  {path}", file=sys.stderr)
        if len(problems) > _REPORT_LINES:
            print(f"  ... and {len(problems) - _REPORT_LINES} more (--json lists all)", file=sys.stderr)


def _search(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        raise _usage('give one query: a text ("a red bicycle") or --image IMG.')
    if args.image is not None and not Path(args.image).is_file():
        what = "is a folder; give one image file" if Path(args.image).is_dir() else "no such file"
        raise _usage(f"--image {args.image}: {what}.")
    add = [_query_term(t, "--add") for t in args.add]
    subtract = [_query_term(t, "--subtract") for t in args.subtract]
    if args.under is not None and not args.under.strip():
        raise _usage("--under is empty; give a folder, e.g. --under ~/Pictures/2024.")
    protocol = None
    if args.preview is not None:
        from .terminal_images import choose_protocol

        lone = "--null" if args.null else "--paths" if args.paths else None
        protocol = choose_protocol(args.preview, "--json" if args.json else lone)
    if args.null and args.json:
        raise _usage("--null prints paths alone; it does not go with --json (which keeps any name whole).")
    with _open(args, True, max_pixels=_max_pixels(args)) as ix:
        query = Path(args.image) if args.image is not None else args.text
        hits = ix.search(query, k=args.k, exact=args.exact, add=add, subtract=subtract,
                         under=None if args.under is None else os.path.expanduser(args.under))  # fmt: skip
        searchable = len(ix)
    if args.json:
        print(json.dumps([{"path": h.path, "score": round(h.score, 6)} for h in hits], indent=2))
    elif protocol is not None:
        from .terminal_images import print_previews

        print_previews(hits, protocol, _max_pixels(args))
    else:
        from .output import print_hits

        print_hits(hits, paths=args.paths, null=args.null)
    if not hits:  # said on stderr: stdout stays a clean (empty) result list
        print(_no_hits(args, searchable), file=sys.stderr)
    return 0


def _query_term(term: str, flag: str) -> str | Path:
    """An --add/--subtract term: an image when it names a file, else words. A name that looks
    like an image but is missing is refused: searched as words it would match nothing useful."""
    from .walk import IMAGE_SUFFIXES

    path = Path(term).expanduser()
    if path.is_file():
        return path
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise _usage(f"{flag} {term}: no such image file; give the path of an image, or words.")
    if not term.strip():
        raise _usage(f"{flag} is empty; give words or the path of an image.")
    return term


def _no_hits(args: argparse.Namespace, searchable: int) -> str:
    if searchable and args.under is not None:
        return (f"edgeclip search: none of the {searchable} photos in {args.db} is under "
                f"{os.path.abspath(os.path.expanduser(args.under))}; check the folder, or index "
                "it first.")  # fmt: skip
    return (f"edgeclip search: {args.db} holds no searchable photos yet; add some with "
            f"`edgeclip index DIR --db {args.db}`.")  # fmt: skip


def _dupes(args: argparse.Namespace) -> int:
    from .walk import printable

    with _open(args, True) as ix:
        groups = ix.duplicates(args.threshold)
    if args.json:
        print(json.dumps([[{"path": h.path, "score": round(h.score, 6)} for h in g] for g in groups], indent=2))
        return 0
    for n, group in enumerate(groups, 1):
        print(f"group {n} ({len(group)} images):")
        for h in group:
            print(f"  {h.score:.4f}  {printable(h.path)}")
    if not groups:
        print(f"no near-duplicates at cosine >= {args.threshold}")
    return 0


def _usage(message: str) -> EdgeclipError:
    from edgeclip.errors import InputError

    return InputError(message)


def _say(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data) if args.json else text)
