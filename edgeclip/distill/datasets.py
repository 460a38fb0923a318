"""Image-caption sources for training: procedural, CSV/TSV files, WebDataset tar shards.

Every source is read as one ordered stream of samples (an epoch-wise seeded permutation for
indexed sources, the shard order for WebDataset). A global batch is ``batch_size``
consecutive stream positions; process ``rank`` of ``world`` takes its contiguous slice of each
global batch, so a run on W processes sees exactly the global batches of a 1-process run.
Unreadable images are skipped and counted; the process then takes its next position.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclip.errors import InputError

from .procedural import ProceduralCaptions

_IMAGE_COLS = ("image", "filepath", "file", "path", "image_path", "url")
_TEXT_COLS = ("caption", "text", "title", "captions")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def to_square(image: Image.Image, size: int) -> np.ndarray:
    """CLIP-style: shortest side → ``size`` (bicubic), centre crop; (size, size, 3) uint8.

    edgeclip's own preprocessing (transformers' arithmetic) with the config ``export`` writes,
    so a student trains on the pixels its bundle gives it. Before, the long side was rounded
    where transformers truncates: a pixel off on some aspect ratios (cos 0.98 on noise images).
    """
    return np.asarray(_resizer(size).resize_crop(image.convert("RGB")), dtype=np.uint8)


@lru_cache(maxsize=8)
def _resizer(size: int):
    from edgeclip.preprocess import Preprocessor

    from .export import preprocessor_config

    return Preprocessor.from_hf(preprocessor_config(size), threads=1)


def decode_image(data: bytes | str | Path, size: int) -> np.ndarray:
    """Decode bytes or a path to a (size, size, 3) uint8 array; raises on anything unreadable."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as im:
        im.load()
        return to_square(im, size)


class CsvCaptions:
    """Image-caption pairs listed in a CSV or TSV file (header row naming the columns).

    The image column is one of ``image, filepath, file, path, image_path`` and the caption
    column one of ``caption, text, title``; relative paths are relative to the file's folder.
    """

    def __init__(self, path: str | Path, image_size: int = 64):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(
                f"data file {str(self.path)!r} does not exist; pass a CSV/TSV with image and caption columns"
            )
        self.image_size = image_size
        text = self.path.read_text(encoding="utf-8-sig")
        delim = (
            "\t" if self.path.suffix.lower() == ".tsv" or ("\t" in text.split("\n", 1)[0]) else ","
        )
        rows = list(csv.DictReader(io.StringIO(text), delimiter=delim))
        if not rows:
            raise InputError(
                f"data file {str(self.path)!r} has no rows; it needs a header and at least one pair"
            )
        cols = {c.strip().lower(): c for c in rows[0] if c is not None}
        icol = next((cols[c] for c in _IMAGE_COLS if c in cols), None)
        tcol = next((cols[c] for c in _TEXT_COLS if c in cols), None)
        if icol is None or tcol is None:
            raise InputError(
                f"data file {str(self.path)!r} has columns {list(rows[0])}; it needs an image column "
                f"({', '.join(_IMAGE_COLS)}) and a caption column ({', '.join(_TEXT_COLS)})"
            )
        root = self.path.parent
        self.items = [
            (root / r[icol].strip(), (r[tcol] or "").strip()) for r in rows if r.get(icol)
        ]
        if not self.items:
            raise InputError(f"data file {str(self.path)!r} lists no images")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        path, caption = self.items[index]
        return decode_image(path, self.image_size), caption


class IndexedStream:
    """This process's share of a seeded, epoch-wise shuffled stream over an indexed source."""

    def __init__(
        self,
        source,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size % world:
            raise InputError(
                f"--batch-size {batch_size} must be divisible by the number of processes ({world})"
            )
        if len(source) == 0:
            raise InputError("the data source is empty; give it at least one image-caption pair")
        self.source, self.batch_size, self.rank, self.world = source, batch_size, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.position = 0  # next stream position to consider (resume state)
        self.skipped = 0
        self._bad: set[int] = set()
        self._perm_epoch, self._perm = -1, np.arange(0)

    def _index_at(self, pos: int) -> int:
        n = len(self.source)
        epoch = pos // n
        if epoch != self._perm_epoch:
            self._perm_epoch = epoch
            self._perm = (
                np.random.default_rng((self.seed, epoch)).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
        return int(self._perm[pos % n])

    def _mine(self, pos: int) -> bool:
        return (pos % self.batch_size) // (self.batch_size // self.world) == self.rank

    def next_batch(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Images (n, S, S, 3) uint8, captions, source indices for this process's slice."""
        want = self.batch_size // self.world
        imgs, caps, idx = [], [], []
        tried = 0
        while len(imgs) < want:
            pos = self.position
            self.position += 1
            if not self._mine(pos):
                continue
            i = self._index_at(pos)
            tried += 1
            if i in self._bad:
                continue
            try:
                img, cap = self.source[i]
            except Exception:  # noqa: BLE001 - any unreadable image is skipped and counted
                self._bad.add(i)
                self.skipped += 1
                if len(self._bad) >= len(self.source):
                    raise InputError(
                        "no image in the data source could be read; check the paths"
                    ) from None
                continue
            imgs.append(img)
            caps.append(cap)
            idx.append(i)
        return np.stack(imgs), caps, np.asarray(idx, np.int64)

    def state(self) -> dict:
        # the unreadable items too: a resumed run would otherwise count them again next epoch
        return {"position": self.position, "skipped": self.skipped, "bad": sorted(self._bad)}

    def load_state(self, state: dict) -> None:
        self.position, self.skipped = int(state["position"]), int(state["skipped"])
        self._bad = {int(i) for i in state.get("bad", ())}


class ShardStream:
    """This process's share of WebDataset tar shards (img2dataset layout: ``KEY.jpg`` + ``KEY.txt``).

    Streams samples in shard order with the ``webdataset`` library, decoding only this
    process's images; repeats the shards forever. Resume skips the recorded number of samples.
    """

    def __init__(
        self, urls: str, batch_size: int, rank: int = 0, world: int = 1, image_size: int = 64
    ):
        if batch_size % world:
            raise InputError(
                f"--batch-size {batch_size} must be divisible by the number of processes ({world})"
            )
        self.urls, self.batch_size, self.rank, self.world = urls, batch_size, rank, world
        self.image_size = image_size
        self.position = 0
        self.skipped = 0
        self._it: Iterator | None = None
        self._raw_pos = 0

    def _raw(self) -> Iterator[dict]:
        import webdataset as wds

        while True:
            # empty_check=False: an empty stream is reported below with our own message.
            ds = wds.WebDataset(self.urls, shardshuffle=False, empty_check=False, nodesplitter=None)
            n = 0
            for sample in ds:
                n += 1
                yield sample
            if n == 0:
                raise InputError(
                    f"WebDataset shards {self.urls!r} hold no samples; check the path pattern"
                )

    def _decode(self, sample: dict) -> tuple[np.ndarray, str]:
        img = next((sample[k] for k in _IMAGE_EXTS if k in sample), None)
        txt = sample.get("txt")
        if img is None or txt is None:
            raise ValueError(f"sample {sample.get('__key__')!r} lacks an image or a .txt caption")
        cap = txt.decode("utf-8") if isinstance(txt, (bytes, bytearray)) else str(txt)
        return decode_image(img, self.image_size), cap.strip()

    def next_batch(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        if self._it is None:
            self._it = self._raw()
            for _ in range(self.position):  # resume: skip what earlier runs consumed
                next(self._it)
        want = self.batch_size // self.world
        imgs, caps, idx = [], [], []
        fails = 0
        while len(imgs) < want:
            sample = next(self._it)
            pos = self.position
            self.position += 1
            if (pos % self.batch_size) // want != self.rank:
                continue
            try:
                img, cap = self._decode(sample)
            except Exception:  # noqa: BLE001 - corrupt samples are skipped and counted
                self.skipped += 1
                fails += 1
                if fails > 10_000 and not imgs:
                    raise InputError(
                        f"no readable image in 10,000 samples of {self.urls!r}"
                    ) from None
                continue
            imgs.append(img)
            caps.append(cap)
            idx.append(-1)
        return np.stack(imgs), caps, np.asarray(idx, np.int64)

    def state(self) -> dict:
        return {"position": self.position, "skipped": self.skipped}

    def load_state(self, state: dict) -> None:
        self.position, self.skipped = int(state["position"]), int(state["skipped"])
        self._it = None


def check_source(data: str) -> None:
    """Refuse a ``--data`` no stream can open, from its name alone (cheap: before any teacher)."""
    low = data.lower()
    if data == "procedural":
        return
    if low.endswith((".csv", ".tsv", ".txt")):
        if not os.path.isfile(data):
            raise InputError(
                f"--data {data!r} does not exist (or is not a file); pass a CSV/TSV with image and caption columns"
            )
        return
    if ".tar" in low:
        first = data.split("{", 1)[0]
        if "{" not in data and not os.path.exists(data):
            raise InputError(f"shard {data!r} does not exist")
        if "{" in data and not Path(first).parent.exists():
            raise InputError(f"shard folder {str(Path(first).parent)!r} does not exist")
        return
    raise InputError(
        f"--data {data!r}: expected 'procedural', a .csv/.tsv file, or .tar shards like shards/{{000000..000003}}.tar"
    )


def open_stream(
    data: str,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    *,
    image_size: int = 64,
    seed: int = 0,
    procedural_size: int = 60_000,
    procedural_seed: int = 0,
):
    """Open ``data``: ``procedural``, a ``.csv``/``.tsv`` file, or ``.tar`` shards (brace patterns ok)."""
    check_source(data)
    if data == "procedural":
        src = ProceduralCaptions(procedural_size, seed=procedural_seed, image_size=image_size)
        return IndexedStream(src, batch_size, rank, world, seed)
    if data.lower().endswith((".csv", ".tsv", ".txt")):
        return IndexedStream(CsvCaptions(data, image_size), batch_size, rank, world, seed)
    return ShardStream(data, batch_size, rank, world, image_size)
