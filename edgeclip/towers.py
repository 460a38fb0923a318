"""Run one tower of a variant over a batch of any size: chunking, fixed-batch padding, extra inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .backends.base import Session
from .bundle import Tower, Variant
from .errors import EdgeclipError, GraphOpenError


def text_feeds(ids: np.ndarray, input_names: list[str], id_input: str) -> dict[str, np.ndarray]:
    """Feeds for a text graph: the ids, plus an attention mask (1 up to EOT) if the graph has one.

    CLIP's text tower is causal and pools at EOT, so the mask only matters for graphs that
    require it as an input (e.g. transformers' combined exports); its value after EOT is moot.
    """
    feeds = {id_input: ids}
    if "attention_mask" in input_names and id_input != "attention_mask":
        eot = np.argmax(ids, axis=1)
        feeds["attention_mask"] = (np.arange(ids.shape[1])[None, :] <= eot[:, None]).astype(
            ids.dtype
        )
    return feeds


def trim_to_last_eot(ids: np.ndarray) -> np.ndarray:
    """Cut the columns after the chunk's last end-of-text token (the largest id of each row).

    CLIP's text tower is causal and pools at EOT, so what follows a row's EOT never reaches its
    embedding: a prompt of 7 tokens need not run 77 positions. Same numbers, less work.
    """
    if ids.ndim != 2 or ids.shape[1] == 0:
        return ids
    last = int(np.argmax(ids, axis=1).max()) + 1
    return ids[:, :last] if last < ids.shape[1] else ids


def pad_to_length_bucket(ids: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
    """``ids`` cut after its last end token, then zero-padded to the shortest of ``lengths``
    that holds it (a fixed-shape graph exported at those lengths: LiteRT). Padding after EOT
    never reaches the embedding, so the numbers are those of the full-length graph."""
    ids = trim_to_last_eot(ids)
    fits = [n for n in sorted(lengths) if n >= ids.shape[1]]
    if not fits:
        return ids  # longer than every bucket: the session names the lengths it takes
    out = np.zeros((ids.shape[0], fits[0]), dtype=ids.dtype)
    out[:, : ids.shape[1]] = ids
    return out


class TowerRunner:
    """Opens a tower's graph(s) lazily and runs arrays of any batch size through them.

    A dynamic-batch tower is one file. A fixed-batch tower (LiteRT) has one file per batch size:
    ``tower.file`` holds a ``{batch}`` placeholder and ``tower.batch_sizes`` the sizes exported;
    each chunk goes to the largest size that fits, the tail is padded and the padding dropped.
    """

    def __init__(self, tower: Tower, opener: Callable[[str], Session], is_text: bool):
        self.tower = tower
        self._opener = opener
        self._is_text = is_text
        self._sessions: dict[int | None, Session] = {}

    @property
    def device(self) -> str:
        """The device its graphs are opened for (what was asked; sessions say what ran)."""
        return str(getattr(self._opener, "device", "auto"))

    def session(self, batch: int | None = None) -> Session:
        if batch not in self._sessions:
            rel = self.tower.file.format(batch=batch) if batch is not None else self.tower.file
            self._sessions[batch] = self._opener(rel)
        return self._sessions[batch]

    @property
    def is_open(self) -> bool:
        return bool(self._sessions)

    def warm(self) -> None:
        """Open the graph(s) now rather than on first use."""
        for size in self.tower.batch_sizes or (None,):
            self.session(size)

    def _run(self, array: np.ndarray, batch: int | None) -> np.ndarray:
        session = self.session(batch)
        if self._is_text and self.tower.dynamic_sequence:
            array = trim_to_last_eot(array)
        elif self._is_text and self.tower.sequence_lengths:
            array = pad_to_length_bucket(array, self.tower.sequence_lengths)
        if self._is_text:
            feeds = text_feeds(array, session.input_names, self.tower.input)
        else:
            feeds = {self.tower.input: array}
        return session.run(feeds)

    def __call__(self, array: np.ndarray, batch_size: int) -> np.ndarray:
        """Run ``array`` (N, ...) in chunks of at most ``batch_size``; returns (N, D) float32."""
        outputs = []
        sizes = sorted(self.tower.batch_sizes) if self.tower.batch_sizes else None
        start = 0
        while start < len(array):
            if sizes is None:
                chunk = array[start : start + batch_size]
                outputs.append(self._run(chunk, None))
            else:
                remaining = len(array) - start
                fitting = [s for s in sizes if s <= min(remaining, max(batch_size, sizes[0]))]
                size = fitting[-1] if fitting else sizes[0]
                chunk = array[start : start + size]
                if len(chunk) < size:
                    pad = np.repeat(chunk[-1:], size - len(chunk), axis=0)
                    out = self._run(np.concatenate([chunk, pad]), size)[: len(chunk)]
                else:
                    out = self._run(chunk, size)
                outputs.append(out)
            start += len(chunk)
        return np.concatenate(outputs).astype(np.float32, copy=False)


def variant_opener(
    root: Path, variant: Variant, threads: int | None = None, device: str = "auto"
) -> Callable[[str], Session]:
    """A function that opens one of ``variant``'s graph files (relative to ``root``) on its backend."""
    from .backends import get_backend

    backend = get_backend(variant.backend)

    def opener(rel: str) -> Session:
        path = Path(root) / rel
        try:
            return backend.open(path, threads=threads, device=device, precision=variant.precision)
        except (EdgeclipError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime's own error, a traceback to users
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
            raise GraphOpenError(
                f"{variant.backend} cannot open {path} (variant {variant.id}): {first}. If the "
                "file is damaged, loading with verification on (the default; verify=False or "
                "--no-verify skips its sha256 check) says so: re-download or re-convert the "
                "bundle; else this runtime's version may not read it (see `edgeclip info`)."
            ) from exc

    opener.device = device  # type: ignore[attr-defined]
    return opener


def open_towers(
    root: Path, variant: Variant, threads: int | None = None, device: str = "auto"
) -> tuple[TowerRunner, TowerRunner]:
    """(image, text) runners for a variant: what the runtime, the gate and the benchmarks all use."""
    opener = variant_opener(root, variant, threads, device)
    return TowerRunner(variant.image, opener, is_text=False), TowerRunner(
        variant.text, opener, is_text=True
    )
