"""``edgeclip index DIR --watch [SECONDS]``: keep an index fresh as photos arrive.

After the first pass it re-walks the folders every SECONDS and embeds only what is new or
changed, by polling rather than inotify: inotify sees nothing on NFS/SMB mounts (a NAS), needs a
watch per folder, and a walk of an unchanged tree is stat calls only. The writer lock is held
during a pass and released between passes, so ``--forget`` or a search from another shell never
waits long, and ``edgeclip serve --index`` sees each pass's photos once they are committed.

Output is a line per pass that changed something (a JSON line each with ``--json``); a file that
fails is retried every pass (it may have been half-copied) but reported once. A pass that finds another writer
holding the index is skipped, and a watched folder that vanishes (deleted, renamed, its drive
pulled) is said once while the others are still watched. Stopped between
passes (Ctrl-C, SIGTERM from ``systemctl stop``) it exits 0: nothing was in flight. Stopped in a
pass it ends as any interrupted run does, with what was committed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["watch"]


def watch(update: Callable[[], Any], interval: float, *, searchable: Callable[[], int],
          first: Any, as_json: bool = False, out: TextIO | None = None) -> int:  # fmt: skip
    """Run ``update()`` (one incremental pass, returning its ``Report``) every ``interval``
    seconds until interrupted; ``first`` is the report of the pass already run."""
    out = out or sys.stdout
    seen = {("file", p, why) for p, why in first.failures} | {("folder", e, "") for e in first.walk_errors}
    missing, passes, embedded = first.missing, 0, 0
    print(f"edgeclip index: watching; a pass every {interval:g} s (Ctrl-C to stop)",
          file=sys.stderr, flush=True)  # fmt: skip
    busy, locked = False, []
    try:
        while True:
            time.sleep(interval)
            busy = True
            report = _pass(update, interval, locked)
            busy = False
            if report is None:
                continue
            passes, embedded = passes + 1, embedded + report.embedded
            news = [(k, p, why) for k, p, why in _problems(report) if (k, p, why) not in seen]
            seen.update(news)
            if report.embedded or report.moved or report.pruned or report.missing != missing or news:
                _say(report, news, searchable(), as_json, out)
            missing = report.missing
    except KeyboardInterrupt:
        if busy:
            raise  # in the middle of a pass: the caller says what was committed
        print(f"edgeclip index: stopped watching after {passes} more passes ({embedded} "
              "photos embedded by them)", file=sys.stderr)  # fmt: skip
        return 0


def _pass(update: Callable[[], Any], interval: float, locked: list[str]) -> Any:
    """One pass, or None when another writer (a one-off ``edgeclip index``, ``--forget``)
    holds the index: this pass is skipped rather than ending the watch, said once per hold."""
    from .store import IndexLockedError

    try:
        report = update()
    except IndexLockedError as exc:
        if str(exc) not in locked:  # the message last said: a long hold is said once
            locked[:] = [str(exc)]
            print(f"edgeclip index: {exc} Skipping this pass; the next one in {interval:g} s.",
                  file=sys.stderr, flush=True)  # fmt: skip
        return None
    locked.clear()
    return report


def _problems(report: Any) -> list[tuple[str, str, str]]:
    return [("file", p, why) for p, why in report.failures] + [("folder", e, "") for e in report.walk_errors]


def _say(report: Any, news: list[tuple[str, str, str]], searchable: int, as_json: bool, out: TextIO) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if as_json:
        print(json.dumps({"time": stamp, **report.to_dict(), "searchable": searchable}), file=out, flush=True)
        return
    print(f"{stamp} {report.summary()}; {searchable} photos searchable", file=out, flush=True)
    from .walk import printable

    for kind, path, why in news:
        print(f"  {printable(path)}: {why}" if kind == "file" else f"  {path}", file=sys.stderr, flush=True)
