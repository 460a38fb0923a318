"""Frozen-teacher embeddings computed once per training item and reused (in memory, on disk).

For an indexed source (procedural data, CSV files) item ``i`` is always the same image and
caption, so its teacher embeddings are too: the first time a run meets ``i`` they are computed,
afterwards they are looked up, and with a cache folder they are kept on disk for later runs, so a
KD step costs what a plain step costs. Embeddings are L2-normalised and rounded to fp16 whether
fresh or cached, so a run computes the same numbers with and without a warm cache (resume stays
exact). Streams without indices (tar shards) compute them every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .students import encode_image, encode_text, teacher_logit_scale


def source_key(data: str, size: int, seed: int, image_size: int, context_length: int) -> str:
    """What decides item ``i``'s image and tokens: the source, its size/seed and input shapes."""
    from .procedural import DATA_VERSION

    version = [DATA_VERSION] if data == "procedural" else []
    blob = json.dumps([data, size, seed, image_size, context_length, *version])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def store_key(digest: str | None, data: str, size: int, seed: int, image_size: int, context_length: int) -> str:
    """The store's name: the teacher's weights digest and ``source_key``."""
    return f"{(digest or 'teacher')[:16]}-" + source_key(data, size, seed, image_size, context_length)


def warm_procedural(teacher_dir: str, cache_dir: str | Path, size: int, image_size: int,
                    context_length: int, seed: int = 0, batch: int = 500) -> int:  # fmt: skip
    """Fill the on-disk store of the procedural source (``size`` items, ``seed``) with the
    teacher's embeddings of every item, as the trainer would compute them; returns how many
    were computed (0 when already complete). Later runs with ``teacher_cache_dir=cache_dir``
    then make no teacher forward."""
    from edgeclip.tokenizer import tokenize

    from .checkpoint import file_digest
    from .evaluate import to_pixels
    from .procedural import ProceduralCaptions
    from .students import load_model

    teacher = load_model(teacher_dir).eval().requires_grad_(False)
    key = store_key(file_digest(teacher_dir), "procedural", size, seed, image_size, context_length)
    feats = TeacherFeatures(teacher, size, key, disk=Path(cache_dir) / f"{key}.pt")
    src = ProceduralCaptions(size, seed=seed, image_size=image_size)
    missing = (~feats.store["have"]).nonzero().flatten().tolist()
    for i in range(0, len(missing), batch):
        idx = missing[i : i + batch]
        imgs, caps = zip(*(src[j] for j in idx))
        feats(idx, to_pixels(np.stack(imgs)), torch.from_numpy(tokenize(list(caps), context_length)))
    feats.save()
    return feats.computed


class TeacherFeatures:
    """``(idx, pixels, ids) → (image, text)`` teacher embeddings with a per-index store.

    ``n_items``: the source's length (``None``: no store). ``shared``: a dict several runs in one
    process share (keyed by ``key``). ``disk``: a file to load the store from and ``save`` it to.
    """

    def __init__(
        self,
        teacher,
        n_items: int | None,
        key: str,
        shared: dict | None = None,
        disk: Path | None = None,
    ):
        self.teacher, self.disk = teacher, disk
        self.scale = teacher_logit_scale(teacher)
        self.store = None
        if n_items is not None:
            dim = teacher.config.projection_dim
            if shared is not None and key in shared:
                self.store = shared[key]
            else:
                self.store = _load(disk, n_items, dim) or {
                    "img": torch.zeros(n_items, dim, dtype=torch.float16),
                    "txt": torch.zeros(n_items, dim, dtype=torch.float16),
                    "have": torch.zeros(n_items, dtype=torch.bool),
                }
                if shared is not None:
                    shared[key] = self.store
        self.computed = 0

    @torch.no_grad()
    def __call__(self, idx, pixels: torch.Tensor, ids: torch.Tensor):
        dev = pixels.device
        index = torch.as_tensor(idx, dtype=torch.long)
        s = self.store
        if s is not None and bool((index >= 0).all()) and bool(s["have"][index].all()):
            return s["img"][index].to(dev).float(), s["txt"][index].to(dev).float()
        ti = torch.nn.functional.normalize(
            encode_image(self.teacher, pixels).float(), dim=-1
        ).half()
        tt = torch.nn.functional.normalize(encode_text(self.teacher, ids).float(), dim=-1).half()
        if s is not None and bool((index >= 0).all()):
            s["img"][index], s["txt"][index], s["have"][index] = ti.cpu(), tt.cpu(), True
            self.computed += len(index)
        return ti.float(), tt.float()

    @torch.no_grad()
    def gather(self, device: torch.device) -> None:
        """Take every process's embeddings into this store, and their count (a collective).

        Before, rank 0 saved its own items alone: a later run found half a store, which misses
        on every batch, and ``teacher_items_computed`` counted rank 0's forwards only.
        """
        from . import dist

        self.computed = dist.total(self.computed, device)
        if self.store is None or not dist.active():
            return
        import torch.distributed as tdist

        s, rank, world = self.store, tdist.get_rank(), tdist.get_world_size()
        # each item is taken from the lowest rank holding it, so the sum below adds one copy
        owner = torch.where(s["have"], rank, world).to(device)
        tdist.all_reduce(owner, op=tdist.ReduceOp.MIN)
        mine = (owner == rank).cpu()
        for k in ("img", "txt"):  # float32: exact for fp16 values plus zeros
            part = torch.where(mine[:, None], s[k].float(), 0.0).to(device)
            tdist.all_reduce(part)
            s[k] = part.cpu().half()
        s["have"] = (owner < world).cpu()

    def save(self) -> None:
        """Write the store to ``disk`` (atomically) when this run added embeddings to it."""
        if self.disk is None or self.store is None or not self.computed:
            return
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        # a temp file of this process's own: runs sharing the cache folder may save at once
        # (before: one's rename took the other's half-written file, the other's rename failed)
        tmp = self.disk.with_name(f"{self.disk.name}.{os.getpid()}.tmp")
        torch.save(self.store, tmp)
        os.replace(tmp, self.disk)


def _load(path: Path | None, n_items: int, dim: int) -> dict | None:
    """The store saved at ``path``; ``None`` when there is none, or (with a warning) when it is
    damaged or of another shape: it is only a cache, so the embeddings are computed again and the
    file is rewritten at the end of the run. Before, a damaged file was torch's traceback."""
    if path is None or not path.is_file():
        return None
    try:
        store = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(store, dict) and tuple(store["img"].shape) == (n_items, dim)
              and tuple(store["txt"].shape) == (n_items, dim) and tuple(store["have"].shape) == (n_items,))  # fmt: skip
        why = "" if ok else f"it does not hold {n_items} items of {dim} dims"
    except Exception as e:  # noqa: BLE001 - whatever torch raises for a damaged file
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if why:
        warnings.warn(f"teacher cache file {path} is not usable ({why}); the teacher's embeddings are "
                      "computed again and the file rewritten", RuntimeWarning, stacklevel=2)  # fmt: skip
        return None
    return store
