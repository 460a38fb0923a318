"""Vector storage and search: an append-only float16 matrix on disk, exact and HNSW search.

The matrix file holds one row per *slot*, float16 (half the bytes of float32; the cosine it
loses is measured in ``benchmarks/index_bench.py``). Rows are only ever appended; the SQLite
store says which slots are live. Search memory-maps the file, so a cold ``edgeclip search``
reads only what it touches.

Candidates come from usearch (``pip install edgeclip[index]``): its SIMD exact scan below
``ANN_MIN_VECTORS`` and its HNSW graph above it (chosen by measurement, see docs/index.md).
Every candidate is then rescored in float32 numpy against the stored row, so exact search
returns exactly what a numpy brute force over the stored vectors returns. Without usearch
the scan is numpy, correct but slower.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import InputError

__all__ = ["ANN_MIN_VECTORS", "AnnIndex", "VectorFile", "combine", "have_usearch", "rescore", "scan",
           "unit_rows"]

DTYPE = np.float16
# Below this many vectors the exact SIMD scan is fast enough (a few ms here, tens on a Pi) and
# costs no graph build; above it HNSW search stays ~1 ms to 1 M vectors (benchmarks/results).
ANN_MIN_VECTORS = 50_000
# HNSW parameters picked in the benchmark: recall@10 >= 0.95 at 100k with room to spare.
CONNECTIVITY = 16
EXPANSION_ADD = 64
#: HNSW search breadth by graph size: (up to this many vectors, ef). A bigger graph needs a wider
#: search for the same recall. Measured on clustered 512-d vectors, recall@10 at ef 64 / 128 / 256:
#: 100k 0.968 / 0.990 / 0.994; 300k 0.938 / 0.973 / 0.980; 1M 0.668 / 0.820 / 0.890 (3.6 ms p50)
#: (AMD EPYC AVX-512, benchmarks/results/epyc-avx512-vnni-2core/index_bench.md).
EF_BY_SIZE: tuple[tuple[int | None, int], ...] = ((200_000, 64), (600_000, 128), (None, 256))


def expansion_for(size: int) -> int:
    """The search breadth ``ef`` for a graph of ``size`` vectors (``EF_BY_SIZE``)."""
    return next(ef for limit, ef in EF_BY_SIZE if limit is None or size <= limit)


_SCAN_ROWS = 65_536


def have_usearch() -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


class VectorFile:
    """``dim``-wide float16 rows in a flat file; ``slots`` (committed rows) is kept by the caller."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self.row_bytes = self.dim * np.dtype(DTYPE).itemsize

    def rows_on_disk(self) -> int:
        try:
            return self.path.stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def truncate(self, slots: int) -> None:
        """Cut an uncommitted tail (a writer killed between its append and its commit)."""
        with _write_errors(self.path), open(self.path, "ab") as f:
            if f.tell() != slots * self.row_bytes:
                f.truncate(slots * self.row_bytes)
                os.fsync(f.fileno())

    def append(self, slots: int, vectors: np.ndarray) -> None:
        """Write ``vectors`` as rows ``slots, slots+1, ...`` and fsync before any commit."""
        data = np.ascontiguousarray(vectors, dtype=DTYPE)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {data.shape} do not fit a {self.dim}-wide index")
        # A full disk can leave part of a row written: it lies past the committed slots, and
        # the next writer cuts it (truncate).
        with _write_errors(self.path), open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.seek(slots * self.row_bytes)
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def matrix(self, slots: int) -> np.ndarray:
        """Rows ``0 .. slots-1``, memory-mapped read-only (an empty array for no slots)."""
        if slots == 0:
            return np.zeros((0, self.dim), DTYPE)
        on_disk = self.rows_on_disk()
        if on_disk < slots:
            from .store import IndexFileError

            raise IndexFileError(
                f"the vectors file {self.path} holds {on_disk} rows but the index committed "
                f"{slots}; it was truncated or replaced. Run `edgeclip index` on the index's folders "
                "again: it embeds the files whose vectors were lost."
            )
        return np.memmap(self.path, dtype=DTYPE, mode="r", shape=(slots, self.dim))


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` (a full disk, a read-only file) as ``IndexFileError`` naming the fix."""
    try:
        yield
    except OSError as e:
        from .dbpath import describe

        raise describe(path, e) from e


def scan(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` slots per query by inner product: (slots (Q, k'), approx scores)."""
    k = min(k, len(matrix))
    if k == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    if have_usearch():
        from usearch.index import MetricKind, search

        res = search(matrix, queries.astype(DTYPE), k, MetricKind.IP, exact=True)
        return _matches(res, len(queries), k)
    scores = np.concatenate(
        [matrix[i : i + _SCAN_ROWS].astype(np.float32) @ queries.T for i in range(0, len(matrix), _SCAN_ROWS)]
    ).T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


def _matches(res: Any, n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(res.keys, np.int64).reshape(n_queries, -1)[:, :k]
    dist = np.asarray(res.distances, np.float32).reshape(n_queries, -1)[:, :k]
    counts = np.asarray(getattr(res, "counts", [keys.shape[1]] * n_queries)).reshape(-1)
    for i, c in enumerate(counts):  # unfilled places (fewer results than k) are marked -1
        keys[i, int(c) :] = -1
    return keys, 1.0 - dist


def rescore(matrix: np.ndarray, query: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 cosines of ``slots`` (deduplicated, -1 dropped), best first.

    Rows are renormalised after the float16 round trip, so a file and its byte copy score 1.
    """
    slots = np.unique(slots[slots >= 0])
    scores = unit_rows(matrix[slots]) @ query.astype(np.float32)
    order = np.lexsort((slots, -scores))  # ties broken by slot, so results are deterministic
    return slots[order], scores[order]


def combine(terms: Iterable[tuple[float, np.ndarray]]) -> np.ndarray:
    """``sum(sign * v / |v|)`` over ``terms``, normalised: a query moved toward the added terms
    and away from the subtracted ones (rclip's query arithmetic). ``InputError`` when they
    cancel out, for there is nothing left to search for."""
    total = sum(sign * unit_rows(np.asarray(v)[None])[0].astype(np.float64) for sign, v in terms)
    norm = float(np.linalg.norm(total))
    if not norm > 1e-4:
        raise InputError("the query's terms cancel out: what is subtracted is what is asked "
                         "for; drop one of them.")  # fmt: skip
    return (total / norm).astype(np.float32)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """float16 rows as unit-length float32 rows."""
    out = np.asarray(rows, np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class AnnIndex:
    """An HNSW graph (usearch, float16, inner product) over slots ``0 .. len-1`` of a matrix.

    Saved as one file, replaced atomically; opened memory-mapped (``view``) for search. Dead
    slots stay in the graph until the next compaction; search drops them via the store.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._index: Any = None

    def covered(self) -> int:
        """How many leading slots the saved graph holds (0 when there is none)."""
        index = self._open()
        return 0 if index is None else int(index.size)

    def _open(self) -> Any:
        if self._index is None and self.path.exists() and have_usearch():
            from usearch.index import Index

            self._index = Index.restore(str(self.path), view=True)
        return self._index

    def extend(self, matrix: np.ndarray, threads: int = 0) -> int:
        """Add slots ``covered() .. len(matrix)-1`` and save; returns how many were added."""
        from usearch.index import Index

        start = self.covered()
        if start >= len(matrix):
            return 0
        index = Index(
            ndim=self.dim, metric="ip", dtype="f16", connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD, expansion_search=expansion_for(len(matrix)),
        )  # fmt: skip
        if start:
            index.load(str(self.path))  # into memory: a view cannot grow
        for i in range(start, len(matrix), _SCAN_ROWS):
            block = np.asarray(matrix[i : i + _SCAN_ROWS])
            index.add(np.arange(i, i + len(block)), block, threads=threads)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            index.save(str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # usearch reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            from .dbpath import describe

            raise describe(self.path, e if isinstance(e, OSError) else OSError(str(e))) from e
        self._index = None
        return len(matrix) - start

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._open()
        if index is None:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        index.expansion_search = max(expansion_for(int(index.size)), k)
        res = index.search(queries.astype(DTYPE), min(k, index.size))
        return _matches(res, len(queries), min(k, index.size))
