"""Index upkeep and queries over the stored vectors: reset, recovery, compaction, search, dupes.

Compaction and ``--reindex`` write a new *generation* of the vectors (and graph) files and
switch to it in one SQLite commit, so a reader or a crash sees either the old files or the new.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import vectors as vx
from .store import OK, IndexFileError
from .walk import printable

__all__ = ["after_write", "compact", "duplicates", "recover", "remove", "reset", "search", "unmounted"]

# Re-embedded and removed files leave dead rows in the vectors file; rewrite it past this.
COMPACT_MIN_DEAD = 1000
COMPACT_DEAD_FRACTION = 0.25
_DUPES_BLOCK = 2048
_DUPES_NEIGHBOURS = 16


def reset(index: Any, fingerprint: str, model: dict[str, Any]) -> None:
    """Make ``index`` an empty index of this model (its first write, or ``--reindex``)."""
    store = index.store
    with store.transaction():
        store.con.execute("DELETE FROM files")
        store.set_meta(
            {"fingerprint": fingerprint, "model": model, "dim": str(index.model.embed_dim),
             "slots": "0", "generation": str(index.generation + 1)},
            in_transaction=True,
        )  # fmt: skip
    _remove_stale_files(index)


def recover(index: Any) -> None:
    """At a writer's start: drop a vector tail a killed run appended but never committed, give
    back for embedding the files whose vectors were lost, and drop files of generations no
    longer in use."""
    committed, on_disk = index.committed_slots(), index.vectors.rows_on_disk()
    if on_disk < committed:
        _forget_lost_vectors(index, on_disk, committed)
    index.vectors.truncate(min(on_disk, committed))
    _remove_stale_files(index)


def _forget_lost_vectors(index: Any, on_disk: int, committed: int) -> None:
    """The vectors file holds fewer rows than were committed (deleted, truncated, restored from
    an older backup): the rows past its end are dropped, so this walk embeds those files again,
    and the graph is rebuilt. Extending the file would serve zeros as vectors."""
    store = index.store
    with store.transaction():
        lost = store.con.execute("DELETE FROM files WHERE slot >= ?", (on_disk,)).rowcount
        store.set_meta({"slots": str(on_disk)}, in_transaction=True)
    index.ann.path.unlink(missing_ok=True)
    warnings.warn(
        f"{index.vectors.path} held {on_disk} of the index's {committed} vectors (deleted or "
        f"truncated); the {lost} files past its end are embedded again by this run.",
        stacklevel=3,
    )


def _remove_stale_files(index: Any) -> None:
    folder, name = index.path.parent, index.path.name
    keep = {f"{name}.vectors-{index.generation}", f"{name}.ann-{index.generation}"}
    for entry in os.scandir(folder):
        if entry.name.startswith((f"{name}.vectors-", f"{name}.ann-")) and entry.name not in keep:
            try:
                os.unlink(entry.path)
            except OSError:
                pass  # another reader's platform may hold it; the next writer retries


def after_write(index: Any) -> None:
    """Compact when many rows are dead; extend the HNSW graph when the index is large."""
    slots = index.committed_slots()
    live = index.store.con.execute("SELECT count(slot) FROM files").fetchone()[0]
    if slots - live > max(COMPACT_MIN_DEAD, COMPACT_DEAD_FRACTION * slots):
        compact(index)
        slots = index.committed_slots()
    if live >= vx.ANN_MIN_VECTORS and vx.have_usearch():
        index.ann.extend(index.vectors.matrix(slots))


def compact(index: Any) -> None:
    """Rewrite the live vectors densely into a new generation and renumber their slots."""
    store = index.store
    rows = store.con.execute("SELECT id, slot FROM files WHERE slot IS NOT NULL ORDER BY slot").fetchall()
    old = index.vectors.matrix(index.committed_slots())
    new_gen = index.generation + 1
    target = vx.VectorFile(index.path.with_name(f"{index.path.name}.vectors-{new_gen}"), index.dim)
    target.truncate(0)
    for i in range(0, len(rows), 65_536):
        part = [slot for _, slot in rows[i : i + 65_536]]
        target.append(i, np.asarray(old[part], np.float32))
    with store.transaction():
        # Ascending old slots get ascending new ones (new <= old), so UNIQUE(slot) never clashes.
        store.con.executemany(
            "UPDATE files SET slot = ? WHERE id = ?", [(new, rid) for new, (rid, _) in enumerate(rows)]
        )
        store.set_meta({"generation": str(new_gen), "slots": str(len(rows))}, in_transaction=True)
    _remove_stale_files(index)


def remove(index: Any, paths: list[str], through_links: bool = False) -> int:
    """Delete the rows of these files, or of every file under these folders; with
    ``through_links``, a name that matches no stored path as written also matches the photos
    under it once symlinks are resolved (``--forget /data/pics`` for a library indexed as
    ``~/Pictures``, a link to it), as ``search --under`` does."""
    from .store import under_folder

    with index.store.transaction():
        n = 0
        for p in paths:
            clause, bounds = under_folder(p)
            hit = index.store.con.execute(
                f"DELETE FROM files WHERE path = ? OR {clause}", (p, *bounds)
            ).rowcount
            if not hit and through_links:
                keep = _under(p)
                linked = [(r.path,) for r in index.store.rows() if keep(r.path)]
                hit = index.store.con.executemany("DELETE FROM files WHERE path = ?", linked).rowcount
            n += hit
    return n


def unmounted(rows: Iterable[tuple[str, int]], seen_on: Callable[[str, int], bool] | None = None) -> dict[str, list[str]]:
    """Of these missing files (path, st_dev), those whose drive looks unmounted, by the folder
    that now stands where their filesystem was.

    A file counts as gone only when the nearest folder above it that still exists is on the
    filesystem the file was on. On another one (an empty mount point; /media/pi once the USB
    disk is out) the file's filesystem is simply not there, and pruning would throw away
    hours of embedding. ``seen_on(folder, dev)``: whether this walk found files under
    ``folder`` on ``dev``; then that filesystem is mounted (under a new device number after a
    remount) and its missing files are really gone.
    """
    cache: dict[str, tuple[str, int]] = {}
    mounted: dict[tuple[str, int], bool] = {}  # one query per folder, not one per file
    away: dict[str, list[str]] = {}
    for path, dev in rows:
        folder, folder_dev = _nearest_existing(os.path.dirname(path), cache)
        if not dev or folder_dev == dev:
            continue
        key = (folder, folder_dev)
        if key not in mounted:
            mounted[key] = seen_on is not None and seen_on(folder, folder_dev)
        if not mounted[key]:
            away.setdefault(folder, []).append(path)
    return away


def _nearest_existing(folder: str, cache: dict[str, tuple[str, int]]) -> tuple[str, int]:
    chain = []
    while folder not in cache:
        try:
            cache[folder] = (folder, os.stat(folder).st_dev)
        except OSError:
            chain.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:  # nothing above exists (cannot happen for absolute paths)
                cache[folder] = (folder, -1)
            folder = parent
    for f in chain:
        cache[f] = cache[folder]
    return cache[folder]


def unmounted_message(folder: str, paths: list[str], db: Any) -> str:
    return (
        f"{printable(folder)}: {len(paths)} indexed photos under it were not found, and it is on "
        "another filesystem than they were (a drive or network share that is not mounted?); "
        "they are kept, hidden from search, and come back unchanged once it is mounted. If "
        f"they are gone for good: edgeclip index --forget '{printable(folder)}' --db '{db}'"
    )


def search(
    index: Any, query: np.ndarray, k: int, exact: bool, under: str | None = None
) -> list[tuple[str, float]]:
    """Best ``k`` live (path, cosine) pairs, only files under the folder ``under`` if given;
    retried once if a compaction swapped the files."""
    try:
        return _search_once(index, query, k, exact, under)
    except (IndexFileError, FileNotFoundError):
        return _search_once(index, query, k, exact, under)


def _under(folder: str | None) -> Any:
    """Whether a stored path lies under ``folder``, as named or through symlinks: a library
    indexed as ``~/Pictures`` (a link to ``/data/pics``) is also under ``/data/pics/2024``,
    and the other way round. Folders are resolved once each, not once per hit."""
    if folder is None:
        return lambda path: True
    prefix = folder.rstrip(os.sep) + os.sep
    real = os.path.realpath(folder)
    real_prefix = real.rstrip(os.sep) + os.sep
    resolved: dict[str, str] = {}

    def keep(path: str) -> bool:
        if path == folder or path.startswith(prefix):
            return True
        parent = os.path.dirname(path)
        if parent not in resolved:
            resolved[parent] = os.path.realpath(parent)
        whole = os.path.join(resolved[parent], os.path.basename(path))
        return whole == real or whole.startswith(real_prefix)

    return keep


def _search_once(
    index: Any, query: np.ndarray, k: int, exact: bool, under: str | None
) -> list[tuple[str, float]]:
    keep = _under(under)
    slots = index.committed_slots()
    if slots == 0:
        return []
    matrix = index.vectors.matrix(slots)
    ann = None if exact else index.ann
    covered = min(ann.covered(), slots) if ann is not None else 0
    want = k
    while True:
        fetch = min(slots, 2 * want + 10)
        ids, scores = vx.rescore(matrix, query, _candidates(matrix, query, fetch, ann, covered))
        paths = index.store.paths_of_slots(ids)
        hits = [(paths[int(s)], float(sc)) for s, sc in zip(ids, scores)
                if int(s) in paths and keep(paths[int(s)])]  # fmt: skip
        if len(hits) >= k or fetch >= slots:
            return hits[:k]
        want *= 4  # dead or missing rows, or files elsewhere, took places: look further


def _candidates(matrix: np.ndarray, query: np.ndarray, fetch: int, ann: Any, covered: int) -> np.ndarray:
    parts = []
    if covered:
        parts.append(ann.search(query[None], fetch)[0][0])
    if covered < len(matrix):  # rows added since the graph was built: scanned exactly
        parts.append(vx.scan(matrix[covered:], query[None], fetch)[0][0] + covered)
    return np.concatenate(parts)


def duplicates(index: Any, threshold: float) -> list[list[tuple[str, float]]]:
    """Connected groups of images whose cosine to another member is >= ``threshold``."""
    rows = index.store.con.execute(
        f"SELECT slot, path FROM files WHERE status = '{OK}' ORDER BY slot"
    ).fetchall()
    if len(rows) < 2:
        return []
    slots = np.array([s for s, _ in rows], np.int64)
    vecs = vx.unit_rows(index.vectors.matrix(index.committed_slots())[slots])
    pairs = _similar_pairs(index, vecs, slots, threshold)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best = np.zeros(len(rows), np.float32)
    for i, j, s in pairs:
        parent[find(i)] = find(j)
        best[i], best[j] = max(best[i], s), max(best[j], s)
    groups: dict[int, list[int]] = {}
    for i in {i for i, _, _ in pairs} | {j for _, j, _ in pairs}:
        groups.setdefault(find(i), []).append(i)
    out = [sorted((rows[i][1], float(best[i])) for i in g) for g in groups.values()]
    return sorted(out, key=lambda g: (-len(g), -max(s for _, s in g), g[0][0]))


def _similar_pairs(index: Any, vecs: np.ndarray, slots: np.ndarray, t: float) -> list[tuple[int, int, float]]:
    pairs = []
    ann = index.ann
    if len(vecs) >= vx.ANN_MIN_VECTORS and ann.covered():
        row_of = {int(s): i for i, s in enumerate(slots)}
        for i0 in range(0, len(vecs), _DUPES_BLOCK):
            keys, scores = ann.search(vecs[i0 : i0 + _DUPES_BLOCK], _DUPES_NEIGHBOURS)
            for r, (ks, ss) in enumerate(zip(keys, scores)):
                for key, s in zip(ks, ss):
                    j = row_of.get(int(key))
                    if j is not None and j != i0 + r and s >= t:
                        pairs.append((min(i0 + r, j), max(i0 + r, j), float(s)))
        return sorted(set(pairs))
    for i0 in range(0, len(vecs), _DUPES_BLOCK):
        sims = vecs[i0 : i0 + _DUPES_BLOCK] @ vecs.T
        for r, j in zip(*np.nonzero(sims >= t)):
            if j > i0 + r:
                pairs.append((int(i0 + r), int(j), float(sims[r, j])))
    return pairs
