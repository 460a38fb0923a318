"""``Index``: a photo library's embeddings on disk, kept up to date and searched by text or image.

    >>> from edgeclip.index import Index
    >>> with Index("photos.db", model="tinyclip-8m") as ix:
    ...     ix.update(["~/Pictures"])
    ...     ix.search("a dog on a beach", k=5)

Files next to ``photos.db``: ``photos.db-wal``/``-shm`` (SQLite), ``photos.db.vectors-N`` (the
float16 matrix), ``photos.db.ann-N`` (the HNSW graph, above ``ANN_MIN_VECTORS``) and
``photos.db.lock`` (the writer lock).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BatchError, InputError, ModelNotFoundError
from edgeclip.images import DEFAULT_MAX_PIXELS

from . import indexer, maintenance, vectors
from .store import MISSING, OK, IndexFileError, ModelMismatchError, Store, WriterLock
from .walk import FileEntry, check_roots, not_storable, printable, storable, walk

__all__ = ["Hit", "Index"]

DEFAULT_MODEL = "tinyclip-8m"


@dataclass(frozen=True)
class Hit:
    path: str
    score: float


class Index:
    """A photo index at ``path`` (an SQLite file, created on first write).

    ``model``: a zoo name, bundle or checkpoint dir, or a loaded ``EdgeClip``; default: the
    model the index was built with (its backend and precision too), else ``tinyclip-8m``.
    An index refuses a model whose fingerprint (bundle digest, variant, preprocessing)
    differs from the one it was built with, unless ``reindex=True``, which drops every vector.
    ``readonly``: search only; nothing is created or written. ``wait``: seconds a writer waits
    for another writer's lock before ``IndexLockedError``. ``draft``: JPEG DCT downscaling.
    ``previews``: decode a JPEG's embedded preview when it covers the resize target (opt-in:
    see ``edgeclip/index/previews.py``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: Any = None,
        *,
        backend: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        reindex: bool = False,
        readonly: bool = False,
        wait: float = 0.0,
        batch_size: int = 32,
        workers: int | None = None,
        draft: bool = True,
        previews: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.store = Store(path, readonly=readonly)
        self.path = self.store.path
        self._model_arg, self._backend, self._precision = model, backend, precision
        self._threads, self._reindex = threads, reindex
        self.wait, self.batch_size, self.workers = wait, batch_size, workers
        self.draft, self.previews, self.max_pixels = draft, previews, max_pixels
        self._model: Any = None
        self._checked = False
        self._ann: tuple[tuple, vectors.AnnIndex] | None = None
        self.last_report: indexer.Report | None = None

    # -- model ---------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The ``EdgeClip`` this index embeds with (loaded on first use)."""
        if self._model is None:
            self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        arg = self._model_arg
        if arg is not None and not isinstance(arg, (str, os.PathLike)):
            return arg  # an EdgeClip already loaded by the caller
        import edgeclip

        recorded = self.store.get_json("model") or {}
        name = os.fspath(arg) if arg is not None else recorded.get("name", DEFAULT_MODEL)
        # older indexes recorded abspath, newer ones realpath
        same = arg is None or recorded.get("name") in (os.path.abspath(name), _model_name(name))
        backend = self._backend or (recorded.get("backend") if same else None) or "auto"
        precision = self._precision or (recorded.get("precision") if same else None) or "auto"
        try:
            return edgeclip.load(name, backend=backend, precision=precision, threads=self._threads)
        except ModelNotFoundError as e:
            if arg is not None or "name" not in recorded:
                raise
            # The model was not asked for but read from the index: say so, and how to go on
            # (a bundle folder moved or deleted since the index was built).
            raise ModelNotFoundError(
                f"the index {self.path} was built with the model {name}, which cannot be loaded "
                f"now ({e}) Give the same model where it is now with --model (an `edgeclip "
                "index` run with it records the new place), or rebuild with another: `edgeclip index DIR --db "
                f"{self.path} --model M --reindex`."
            ) from e

    def _check_model(self, writing: bool) -> None:
        """Refuse vectors from another model; record the model on an index's first write."""
        if self._checked and not writing:
            return
        fp = _canonical(self.model.fingerprint)
        recorded = self.store.get_meta("fingerprint")
        rebuild = writing and self._reindex
        if recorded is not None and recorded != fp and not rebuild:
            raise ModelMismatchError(_mismatch_message(self, json.loads(recorded)))
        if writing and (recorded is None or rebuild):
            maintenance.reset(self, fp, _model_record(self.model, self._model_arg))
            self._reindex = False
        elif writing and self._model_arg is not None:
            # The same model given from elsewhere (its bundle moved): remember where it is now,
            # so a search without --model finds it.
            record = _model_record(self.model, self._model_arg)
            if record != self.store.get_json("model"):
                self.store.set_meta({"model": record})
        self._checked = True

    # -- storage -------------------------------------------------------------------------------
    def committed_slots(self) -> int:
        return int(self.store.get_meta("slots") or 0)

    @property
    def generation(self) -> int:
        return int(self.store.get_meta("generation") or 0)

    @property
    def dim(self) -> int:
        dim = self.store.get_meta("dim")
        return int(dim) if dim is not None else int(self.model.embed_dim)

    @property
    def vectors(self) -> vectors.VectorFile:
        return vectors.VectorFile(Path(f"{self.path}.vectors-{self.generation}"), self.dim)

    @property
    def ann(self) -> vectors.AnnIndex:
        """The HNSW graph of the current generation, kept open (memory-mapped) between searches
        until its file changes (another process extended it, or a compaction replaced it)."""
        path = Path(f"{self.path}.ann-{self.generation}")
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = (str(path), 0, 0)
        if self._ann is None or self._ann[0] != key:
            self._ann = (key, vectors.AnnIndex(path, self.dim))
        return self._ann[1]

    def __len__(self) -> int:
        return self.store.counts()[OK]

    def stats(self) -> dict[str, Any]:
        """Row counts by status, slots, and the model the index was built with."""
        return {
            **self.store.counts(), "slots": self.committed_slots(),
            "ann_vectors": self.ann.covered(), "model": self.store.get_json("model"),
        }  # fmt: skip

    # -- writing -------------------------------------------------------------------------------
    def _pipeline(self, use_hash: bool) -> Any:
        from .pipeline import EmbedPipeline

        return EmbedPipeline(
            self.model, batch_size=self.batch_size, workers=self.workers, draft=self.draft,
            previews=self.previews,
            want_hash=use_hash, max_pixels=self.max_pixels,
        )  # fmt: skip

    def update(
        self,
        dirs: list[str | os.PathLike],
        *,
        exclude: list[str] = (),
        prune: bool = False,
        use_hash: bool = False,
        progress: indexer.Progress | None = None,
        commit_every: int = indexer.CHUNK_FILES,
        roots_may_vanish: bool = False,
    ) -> indexer.Report:
        """Walk ``dirs``, embed new and changed images, mark vanished ones missing (or ``prune``).

        ``exclude``: globs matched against names and paths. ``use_hash``: compare sha256 of the
        content instead of size + mtime. ``progress(done, counted, count_final)`` is called per
        file. Rows are committed every ``commit_every`` files: a crash loses at most that many.
        ``roots_may_vanish`` (a watcher's later passes): a folder of ``dirs`` that no longer
        exists is not an error; its photos count as not found (kept if its drive is unmounted)
        and ``walk_errors`` says so.
        """
        def vanished(d: str | os.PathLike) -> bool:
            return roots_may_vanish and not os.path.exists(os.path.expanduser(os.fspath(d)))

        gone = [d for d in dirs if vanished(d)]
        roots = check_roots([d for d in dirs if d not in gone])
        gone_roots = [os.path.abspath(os.path.expanduser(os.fspath(d))) for d in gone]
        with WriterLock(self.path, self.wait):
            self._check_model(writing=True)
            maintenance.recover(self)
            errors: list[str] = []
            unlisted: list[str] = []  # filled by the walk, read once it is done
            report = indexer.run(
                self, walk(roots, exclude, errors, unlisted), self._pipeline(use_hash),
                roots=roots + gone_roots, excludes=exclude, prune=prune, use_hash=use_hash,
                progress=progress, commit_every=commit_every, unlisted=unlisted,
            )  # fmt: skip
            report.walk_errors[:0] = errors + [_gone_message(g) for g in gone_roots]
            maintenance.after_write(self)
        return report

    def add(self, paths: list[str | os.PathLike], *, use_hash: bool = False) -> indexer.Report:
        """Index these files (new or changed ones are embedded); no walk, nothing pruned."""
        entries = [_entry(p) for p in dict.fromkeys(os.path.abspath(os.fspath(p)) for p in paths)]
        with WriterLock(self.path, self.wait):
            self._check_model(writing=True)
            maintenance.recover(self)
            report = indexer.run(self, entries, self._pipeline(use_hash), use_hash=use_hash)
            maintenance.after_write(self)
        return report

    def prune_vanished(self) -> tuple[int, list[str]]:
        """Drop the rows of indexed files that no longer exist (no walk); returns the count and a
        message per folder whose drive looks unmounted: those rows are kept, hidden from search
        (``maintenance.unmounted``)."""
        with WriterLock(self.path, self.wait):
            vanished = [r for r in self.store.rows() if not os.path.lexists(r.path)]
            photos = [(r.path, r.dev) for r in vanished if r.status in (OK, MISSING)]
            away = maintenance.unmounted(photos)
            held = {p for paths in away.values() for p in paths}
            n = maintenance.remove(self, [r.path for r in vanished if r.path not in held])
            with self.store.transaction():
                self.store.set_status(held, MISSING)
        return n, [maintenance.unmounted_message(f, ps, self.path) for f, ps in away.items()]

    def remove(self, paths: list[str | os.PathLike]) -> int:
        """Drop these files, or everything under these folders, from the index; returns the count."""
        with WriterLock(self.path, self.wait):
            return maintenance.remove(self, [os.path.abspath(os.fspath(p)) for p in paths],
                                      through_links=True)  # fmt: skip

    # -- reading -------------------------------------------------------------------------------
    def embed_query(self, query: Any) -> np.ndarray:
        """A text (``str``) or an image (``Path``, bytes, PIL image, array) as a float32 vector."""
        if isinstance(query, str):
            if not query.strip():
                raise InputError("the search text is empty; give words to search for.")
            try:
                return self.model.encode_text([query], invariant=True)[0]
            except BatchError as exc:  # "&nbsp;": no words once cleaned
                raise InputError(f"the search {exc.failures[0]}") from None
        if isinstance(query, os.PathLike):
            from .pipeline import embed_pixels, read_image

            cfg = self.model.preprocessor.cfg
            target = cfg.get("resize_size") or cfg["image_size"]
            try:
                im = read_image(
                    os.fspath(query), draft_to=target if self.draft else None,
                    max_pixels=self.max_pixels, preview_to=target if self.previews else None,
                )  # fmt: skip
            except Exception as e:
                # A file that is not an image at all comes with no reason of its own.
                why = str(e).rstrip(".") or "it is not an image (JPEG, PNG, WebP, GIF, TIFF or BMP)"
                raise InputError(f"cannot search by image '{os.fspath(query)}': {why}.") from e
            # read_image checked this index's own limit
            return embed_pixels(self.model, self.model.preprocessor.one(im, max_pixels=None)[None])[0]
        return self.model.encode_image([query], invariant=True)[0]

    def search(
        self, query: Any, k: int = 20, *, exact: bool = False, add: Any = (),
        subtract: Any = (), under: str | os.PathLike | None = None,
    ) -> list[Hit]:  # fmt: skip
        """The ``k`` best matches, best first. ``str`` is a text query; ``pathlib.Path``, bytes,
        PIL images and arrays are image queries. ``exact``: scan all vectors, never the graph.

        ``add`` / ``subtract``: more queries of either kind whose unit vectors are added to or
        taken from the query's, as rclip does ("a beach", add "sunset", subtract "people").
        ``under``: only files under this folder."""
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}.")
        if len(self) == 0:
            # Nothing to rank, so no model to load: an index that has not recorded one yet
            # would otherwise fetch the default model only to find nothing.
            return []
        self._check_model(writing=False)
        return self.search_vector(self.query_vector(query, add, subtract), k, exact=exact,
                                  under=under)  # fmt: skip

    def query_vector(self, query: Any, add: Any = (), subtract: Any = ()) -> np.ndarray:
        """The unit vector searched for: the query's, plus ``add``'s, minus ``subtract``'s."""
        terms = [(1.0, query)] + [(1.0, q) for q in _terms(add)] + [(-1.0, q) for q in _terms(subtract)]
        return vectors.combine((sign, self.embed_query(q)) for sign, q in terms)

    def search_vector(
        self, vector: np.ndarray, k: int = 20, *, exact: bool = False,
        under: str | os.PathLike | None = None,
    ) -> list[Hit]:  # fmt: skip
        """Search with an embedding (float32, D) of this index's model; ``under`` as in ``search``."""
        folder = None if under is None else os.path.abspath(os.fspath(under))
        vector = np.asarray(vector, np.float32)
        if vector.shape != (self.dim,):
            raise InputError(
                f"a query vector of shape {vector.shape} does not fit the index {self.path}, whose "
                f"vectors have {self.dim} values; embed it with the index's own model."
            )
        found = maintenance.search(self, vector, k, exact, folder)
        return [Hit(p, s) for p, s in found]

    def duplicates(self, threshold: float = 0.95) -> list[list[Hit]]:
        """Groups of near-identical images (cosine >= ``threshold`` to another in the group),
        largest first; each group's hits are scored by their best match inside it. Only the
        stored vectors are compared, so no model is loaded."""
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"threshold must be in (0, 1], got {threshold}.")
        return [[Hit(p, s) for p, s in g] for g in maintenance.duplicates(self, threshold)]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _terms(value: Any) -> list[Any]:
    """``add``/``subtract`` as a list: one text or image is one term, not its characters."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _gone_message(folder: str) -> str:
    return (f"{printable(folder)}: the folder is gone (deleted, renamed, or its drive unmounted); "
            "its photos count as missing until it is back")  # fmt: skip


def _entry(path: str) -> FileEntry:
    if not storable(path):
        raise InputError(f"cannot add {not_storable(path)}.")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"cannot add '{path}': {e.strerror or e}; check the path.") from e
    if not os.path.isfile(path):
        raise InputError(f"cannot add '{path}': not a file; use update() for folders.")
    return FileEntry(path, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def _canonical(fp: dict[str, Any]) -> str:
    return json.dumps(fp, sort_keys=True, default=str)


def _model_name(name: str) -> str:
    """A zoo name as given; a folder as its absolute path, however it was spelt (relative,
    trailing slash, through a symlink)."""
    return os.path.realpath(name) if os.path.exists(name) else name


def _model_record(model: Any, arg: Any) -> dict[str, Any]:
    name = os.fspath(arg) if isinstance(arg, (str, os.PathLike)) else str(model.bundle.root)
    return {"name": _model_name(name), "backend": model.variant.backend, "precision": model.variant.precision}


def _mismatch_message(index: Index, recorded: dict[str, Any]) -> str:
    have = index.store.get_json("model") or {}
    now = index.model.fingerprint

    def short(fp: dict[str, Any]) -> str:
        return f"bundle {str(fp.get('bundle'))[:12]}, variant {fp.get('variant')}, dim {fp.get('embed_dim')}"

    return (
        f"the index {index.path} was built with {have.get('name', '?')} ({short(recorded)}), but "
        f"this model is {short(now)}: their vectors are not comparable. Search with the index's "
        "own model (leave out --model, --backend and --precision), or rebuild it with this one: "
        f"`edgeclip index DIR --db {index.path} --model M --reindex`."
    )


__all__ += ["IndexFileError", "ModelMismatchError"]
