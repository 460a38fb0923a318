"""One indexing run: decide what changed, embed it, and commit in crash-safe chunks.

Per file: unchanged (same size and mtime, or with ``use_hash`` the same sha256) is skipped; a
new path whose size, mtime and inode match an indexed file that is gone is a rename and keeps
its vector; anything else is embedded. Every ``CHUNK_FILES`` files or ``CHUNK_SECONDS`` the
vectors are appended and synced, then their rows committed in one transaction, so a killed
run loses at most one chunk and the next run picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import maintenance
from . import store as st
from .pipeline import EmbedPipeline, Outcome
from .walk import FileEntry, count_files, inside

__all__ = ["Report", "run"]

CHUNK_FILES = 256
CHUNK_SECONDS = 5.0
Progress = Callable[[int, int, bool], None]  # (files done, files counted so far, count final)


@dataclass
class Report:
    """What a run did, from its own counts (the CLI prints it; tests check it)."""

    embedded: int = 0
    unchanged: int = 0
    moved: int = 0  # renamed files (and, with --hash, copies) whose vector was reused
    other: int = 0  # files that are not images, left out
    missing: int = 0  # indexed files no longer found (kept until --prune)
    pruned: int = 0
    unmounted: int = 0  # missing, on a drive that is not mounted: kept even with --prune
    failures: list[tuple[str, str]] = field(default_factory=list)
    walk_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    committed: int = 0  # files whose new state this run committed (kept if it is interrupted)

    def summary(self) -> str:
        rate = f" ({self.embedded / self.seconds:.1f} images/s)" if self.embedded and self.seconds else ""
        parts = [f"{self.embedded} embedded{rate}", f"{self.unchanged} unchanged"]
        parts += [f"{n} {what}" for n, what in ((self.moved, "renamed"), (self.other, "not images"),
                  (self.missing, "missing (run with --prune to drop them)"), (self.pruned, "pruned"),
                  (self.unmounted, "kept: their drive is not mounted"),
                  (len(self.failures), "unreadable")) if n]  # fmt: skip
        return ", ".join(parts) + f" in {self.seconds:.1f} s" + (" (interrupted)" if self.interrupted else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [{"path": p, "reason": r} for p, r in self.failures]
        return d


class _Run:
    def __init__(self, index: Any, use_hash: bool, progress: Progress | None, chunk: int) -> None:
        self.index, self.store = index, index.store
        self.chunk = chunk
        self.use_hash = use_hash
        self.progress = progress
        self.report = Report()
        self.ops: list[tuple] = []
        self.last_commit = time.monotonic()
        self.done = 0
        self.counted, self.count_final = 0, False
        self._seen: list[tuple[str, int]] = []
        # With use_hash: unchanged files indexed without --hash, to hash and record, not embed
        # (the pipeline reads this set; triage fills it before it yields each entry).
        self.hash_only: set[str] = set()
        # dev: which filesystems this walk reached (maintenance.unmounted)
        self.store.con.execute("DROP TABLE IF EXISTS temp.seen")
        self.store.con.execute("CREATE TEMP TABLE seen (path TEXT PRIMARY KEY, dev INTEGER)")

    # -- triage: what needs embedding -------------------------------------------------------
    def triage(self, entries: Iterable[FileEntry]) -> Iterator[FileEntry]:
        for entry in entries:
            self._mark_seen(entry)
            row = self.store.row(entry.path)
            if self.use_hash:
                if row is not None and row.sha256 is None and row.slot is not None and _same_stat(row, entry):
                    self.hash_only.add(entry.path)  # nothing to compare its hash with yet
                yield entry  # the worker hashes it; a known hash is not decoded (see _known())
            elif row is not None and _same_stat(row, entry) and row.status != st.FAILED:
                self._unchanged(row)
            elif row is None and self._renamed(entry):
                self.tick()
            else:
                yield entry
            self.maybe_commit()

    def _unchanged(self, row: st.Row) -> None:
        if row.status == st.MISSING:
            self.ops.append(("status", row.path, st.OK))
        self.report.unchanged += 1
        self.tick()

    def _renamed(self, entry: FileEntry) -> bool:
        for old in self.store.rows_with_stat(entry.size, entry.mtime_ns, entry.ino):
            if old.status == st.OK and old.dev == entry.dev and not os.path.lexists(old.path):
                self.ops.append(("move", old.id, entry))
                self.report.moved += 1
                return True
        return False

    def _mark_seen(self, entry: FileEntry) -> None:
        self._seen.append((entry.path, entry.dev))
        if len(self._seen) >= 1000:
            self.flush_seen()

    def flush_seen(self) -> None:
        self.store.con.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", self._seen)
        self._seen.clear()

    # -- outcomes -------------------------------------------------------------------------------
    def take(self, out: Outcome) -> None:
        if out.status == "known":
            self._known(out)
        elif out.status == st.OK:
            self.ops.append(("put", out.entry, st.OK, out.vector, out.sha256, None))
            self.report.embedded += 1
        elif out.status == st.FAILED:
            self.ops.append(("put", out.entry, st.FAILED, None, None, out.reason))
            self.report.failures.append((out.entry.path, out.reason or "unreadable"))
        else:
            self.ops.append(("put", out.entry, st.OTHER, None, None, None))
            self.report.other += 1
        self.tick()
        self.maybe_commit()

    def _known(self, out: Outcome) -> None:
        own = self.store.row(out.entry.path)
        if own is not None and own.slot is not None and (
            own.sha256 == out.sha256 or out.entry.path in self.hash_only
        ):
            self.ops.append(("restat", out.entry, own.slot, out.sha256))
            self.report.unchanged += 1
        else:
            rows = self.store.rows_with_hash(out.sha256)
            source = next((r for r in rows if r.slot is not None), None)
            if source is None:  # its twin lost its vector during this run: try again next time
                reason = "an indexed file with the same content changed meanwhile; run again"
                self.ops.append(("put", out.entry, st.FAILED, None, None, reason))
                self.report.failures.append((out.entry.path, reason))
                return
            self.ops.append(("copy", out.entry, source.slot, out.sha256))
            self.report.moved += 1

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.counted, self.done), self.count_final)

    # -- commits ----------------------------------------------------------------------------------
    def maybe_commit(self) -> None:
        if len(self.ops) >= self.chunk or (
            self.ops and time.monotonic() - self.last_commit >= CHUNK_SECONDS
        ):
            self.commit()

    def commit(self) -> None:
        if self.ops:
            commit_ops(self.index, self.ops)
            self.report.committed += len(self.ops)  # one op per file
            self.ops = []
        self.last_commit = time.monotonic()


def _same_stat(row: st.Row, entry: FileEntry) -> bool:
    return row.size == entry.size and row.mtime_ns == entry.mtime_ns


def known_hashes(store: st.Store) -> set[str]:
    cur = store.con.execute("SELECT sha256 FROM files WHERE sha256 IS NOT NULL AND slot IS NOT NULL")
    return {r[0] for r in cur}


def run(
    index: Any,
    entries: Iterable[FileEntry],
    pipeline: EmbedPipeline,
    *,
    roots: list[str] | None = None,
    excludes: Iterable[str] = (),
    prune: bool = False,
    use_hash: bool = False,
    progress: Progress | None = None,
    commit_every: int = CHUNK_FILES,
    unlisted: list[str] = (),
) -> Report:
    """Index ``entries`` (walked from ``roots`` when given: then also mark or prune the missing,
    except under the ``unlisted`` folders the walk could not read).

    Rows are committed every ``commit_every`` files (or ``CHUNK_SECONDS``)."""
    t0 = time.perf_counter()
    job = _Run(index, use_hash, progress, max(1, int(commit_every)))
    if use_hash:
        pipeline.known, pipeline.hash_only = known_hashes(index.store), job.hash_only
    stop = threading.Event()
    if roots is not None and progress is not None:
        threading.Thread(target=_count, args=(job, roots, tuple(excludes), stop), daemon=True).start()
    try:
        for out in pipeline.run(job.triage(entries)):
            job.take(out)
        job.commit()
        job.flush_seen()
        if roots is not None:
            _finish_roots(index, job, roots, prune, unlisted)
    except BaseException:
        job.report.interrupted = True
        # Keep what was embedded before the interruption. If that commit fails too (the disk
        # is still full), the first error is the one to report; the index stays as committed.
        with contextlib.suppress(Exception):
            job.commit()
        raise
    finally:
        stop.set()
        job.report.seconds = time.perf_counter() - t0
        index.last_report = job.report
    return job.report


def _count(job: _Run, roots: list[str], excludes: tuple, stop: threading.Event) -> None:
    for n in count_files(roots, excludes, stop.is_set):
        job.counted = n
    job.count_final = not stop.is_set()


def _finish_roots(index: Any, job: _Run, roots: list[str], prune: bool,
                  unlisted: list[str]) -> None:  # fmt: skip
    """Rows under ``roots`` that this walk did not see: dropped with ``prune``, else kept as
    missing (hidden from search, restored without re-embedding if the file comes back). Rows
    under a folder the walk could not list, or on a drive that is not mounted
    (``maintenance.unmounted``), are never dropped: neither says the files are gone."""
    store = index.store
    unseen: list[tuple[str, str, int]] = []
    for root in roots:
        clause, bounds = st.under_folder(root)
        cur = store.con.execute(
            f"SELECT path, status, dev FROM files WHERE {clause} "
            "AND path NOT IN (SELECT path FROM temp.seen)",
            bounds,
        )
        unseen += cur.fetchall()
    if unlisted:
        unseen = [u for u in unseen if not inside(u[0], tuple(unlisted))]
    photos = [(p, dev) for p, s, dev in unseen if s in (st.OK, st.MISSING)]
    away = maintenance.unmounted(photos, lambda folder, dev: _seen_on(store, folder, dev))
    held = {p for paths in away.values() for p in paths}
    gone = [(p, s) for p, s, _ in unseen if p not in held]
    with store.transaction():
        if prune:
            store.delete(p for p, _ in gone)
            job.report.pruned = len(gone)
        else:
            # Nothing worth keeping for a vanished non-image or unreadable file.
            store.delete(p for p, s in gone if s in (st.OTHER, st.FAILED))
            store.set_status((p for p, s in gone if s == st.OK), st.MISSING)
        store.set_status(held, st.MISSING)
    job.report.unmounted = len(held)
    if not prune:
        job.report.missing = sum(1 for _, s in gone if s in (st.OK, st.MISSING))
    job.report.walk_errors += [maintenance.unmounted_message(f, ps, index.path) for f, ps in away.items()]


def _seen_on(store: st.Store, folder: str, dev: int) -> bool:
    clause, bounds = st.under_folder(folder)
    sql = f"SELECT 1 FROM temp.seen WHERE dev = ? AND {clause} LIMIT 1"
    return store.con.execute(sql, (dev, *bounds)).fetchone() is not None


def commit_ops(index: Any, ops: list[tuple]) -> None:
    """Append the chunk's new vectors (synced), then commit all its rows in one transaction."""
    store, slots = index.store, index.committed_slots()
    vectors, planned = [], []
    for op in ops:
        slot = None
        if (op[0] == "put" and op[3] is not None) or op[0] == "copy":
            slot = slots + len(vectors)
            vec = op[3] if op[0] == "put" else index.vectors.matrix(slots)[op[2]].astype(np.float32)
            vectors.append(vec)
        planned.append((op, slot))
    if vectors:
        index.vectors.append(slots, np.stack(vectors))
    with store.transaction():
        for op, slot in planned:
            kind = op[0]
            if kind == "put":
                store.put(op[1], op[2], slot, op[4], op[5])
            elif kind == "copy":
                store.put(op[1], st.OK, slot, op[3], None)
            elif kind == "restat":
                store.put(op[1], st.OK, op[2], op[3], None)
            elif kind == "move":
                store.move(op[1], op[2])
            elif kind == "status":
                store.set_status([op[1]], op[2])
        store.set_meta({"slots": str(slots + len(vectors))}, in_transaction=True)
