"""The probe set a bundle carries: a few images and texts with their reference embeddings.

Written at conversion (``write_probe``) and read by the on-device check (``edgeclip.verify``):
the device runs the probe through a variant and the one gate (``edgeclip.gate``) compares the
result with the reference embeddings computed where the bundle was built. Every probe file is
listed in the manifest with its sha256, so an altered probe is refused like any bundle file.

Layout (``manifest["probe"]`` names the files):

- ``probe/images.npy``: uint8 (N, S, S, 3) crops, already resized to the model's input size;
  the pixels are these bytes through the bundle's normalisation (``Preprocessor.normalise``);
- ``probe/texts.npy``: int32 (T + L, context) token ids: T captions, then L label prompts;
- ``probe/reference_image.npy`` / ``reference_text.npy``: float32 reference embeddings.

The procedural shapes below are the default probe and calibration pictures: they need PIL only.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, IntegrityError

PROBE_DIR = "probe"
N_IMAGES = 8  # + 3 run alone for batch drift: the check stays under a second on 2 cores
N_TEXTS = 16

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
TEMPLATES = ("a photo of a {c} {s}", "a {c} {s}", "a drawing of a {s} that is {c}", "a {s} in {c}")
def synthetic_pairs(n: int, size: int = 224, seed: int = 0) -> tuple[list, list[str], list[str]]:
    """``n`` procedural (PIL image, caption, label) triples: one coloured shape on a noisy ground."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    names = list(COLOURS)
    for i in range(n):
        # (i // 8 + i % 8) mod 6: any 48 consecutive draws hold every colour x shape once
        # (``i // 8 + i`` met only 16 of the 48).
        colour = names[i % len(names)]
        shape = SHAPES[(i // len(names) + i % len(names)) % len(SHAPES)]
        ground = tuple(int(v) for v in nrng.integers(70, 180, 3))
        arr = np.clip(
            np.full((size, size, 3), ground, np.float32) + nrng.normal(0, 8, (size, size, 3)),
            0,
            255,
        )
        im = Image.fromarray(arr.astype(np.uint8))
        draw = ImageDraw.Draw(im)
        r = rng.uniform(0.2, 0.35) * size
        cx, cy = (rng.uniform(r, size - r) for _ in range(2))
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        elif shape == "cross":
            w = r / 3
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
            draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            draw.ellipse(box, outline=fill, width=max(2, int(r / 4)))
        images.append(im)
        captions.append(rng.choice(TEMPLATES).format(c=colour, s=shape))
        labels.append(f"{colour} {shape}")
    return images, captions, labels


def synthetic_labels() -> list[str]:
    """The synthetic set's zero-shot label set: every colour × shape."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]



@dataclass
class Probe:
    """A bundle's probe set, loaded: pixels and ids ready to run, and the reference embeddings."""

    pixels: np.ndarray
    ids: np.ndarray
    n_texts: int
    labels: list[str]
    ref_image: np.ndarray
    ref_text: np.ndarray
    reference: str

    @classmethod
    def load(cls, bundle: Any) -> Probe | None:
        """The probe of an opened ``Bundle``, or None for a bundle made before probe sets."""
        from .preprocess import Preprocessor

        meta = bundle.manifest.get("probe")
        if not meta:
            return None
        try:
            crops = np.load(bundle.path_of(meta["images"]), allow_pickle=False)
            ids = np.load(bundle.path_of(meta["texts"]), allow_pickle=False).astype(np.int64)
            ref_i = np.load(bundle.path_of(meta["reference_image"]), allow_pickle=False)
            ref_t = np.load(bundle.path_of(meta["reference_text"]), allow_pickle=False)
            n_texts, reference = int(meta["n_texts"]), str(meta["reference"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"bundle {bundle.root}: its probe set cannot be read ({type(exc).__name__}: "
                f"{exc}); re-convert it or run `edgeclip verify BUNDLE --refresh`."
            ) from exc
        pixels = Preprocessor(bundle.preprocess or None).normalise(crops)
        return cls(pixels, ids, n_texts, list(meta.get("labels") or []),
                   ref_i.astype(np.float32), ref_t.astype(np.float32), reference)  # fmt: skip


def crops_from_pixels(pixels: np.ndarray, preprocess: dict[str, Any] | None) -> np.ndarray:
    """Invert the normalisation of preprocessed (N, 3, S, S) pixels back to uint8 HWC crops."""
    from .preprocess import Preprocessor

    lut = Preprocessor(preprocess or None).normalise(np.arange(256, dtype=np.uint8)[None, None, :, None].repeat(3, 3))
    crops = np.empty((len(pixels), pixels.shape[2], pixels.shape[3], 3), np.uint8)
    for c in range(3):
        table = lut[0, c, 0]  # increasing, since std > 0
        idx = np.searchsorted(table, pixels[:, c], side="left").clip(0, 255)
        lower = (idx - 1).clip(0, 255)
        nearer = np.abs(table[lower] - pixels[:, c]) < np.abs(table[idx] - pixels[:, c])
        crops[..., c] = np.where(nearer, lower, idx).astype(np.uint8)
    return crops


def write_probe(
    root: str | Path,
    crops: np.ndarray,
    ids: np.ndarray,
    n_texts: int,
    labels: list[str],
    ref_image: np.ndarray,
    ref_text: np.ndarray,
    reference: str,
) -> dict[str, Any]:
    """Write the probe files into bundle directory ``root``; return the manifest's ``probe`` entry."""
    folder = Path(root) / PROBE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "images": (crops.astype(np.uint8), "images.npy"),
        "texts": (np.asarray(ids, np.int32), "texts.npy"),
        "reference_image": (np.asarray(ref_image, np.float32), "reference_image.npy"),
        "reference_text": (np.asarray(ref_text, np.float32), "reference_text.npy"),
    }
    entry: dict[str, Any] = {}
    for key, (array, name) in files.items():
        np.save(folder / name, array, allow_pickle=False)
        entry[key] = f"{PROBE_DIR}/{name}"
    return {**entry, "n_images": int(len(crops)), "n_texts": int(n_texts),
            "labels": list(labels), "reference": reference}  # fmt: skip


def synthetic_probe_inputs(
    preprocess: dict[str, Any] | None, tokenizer: Any, n_images: int = N_IMAGES, seed: int = 7
) -> tuple[np.ndarray, np.ndarray, int, list[str]]:
    """Procedural probe inputs: (uint8 crops, token ids, number of captions, label names)."""
    from .preprocess import Preprocessor

    pre = Preprocessor(preprocess or None)
    images, captions, _ = synthetic_pairs(n_images, pre.image_size, seed)
    crops = np.stack([np.asarray(pre.resize_crop(im.convert("RGB"))) for im in images])
    labels = synthetic_labels()
    ids = tokenizer(captions + [f"a photo of a {label}" for label in labels])
    return crops, np.asarray(ids, np.int64), len(captions), labels


def reference_probe(root: Path, manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """Write a probe set whose reference is the manifest's reference variant run on this host
    (a prebuilt export, or an older bundle given one by ``edgeclip verify --refresh``)."""
    from .bundle import Variant
    from .preprocess import Preprocessor
    from .tokenizer import Tokenizer
    from .towers import open_towers
    from .verify import cpu_identity

    root = Path(root)
    ref = next((v for v in map(Variant.from_dict, manifest["variants"]) if v.is_reference), None)
    if ref is None:
        raise IntegrityError(f"bundle {root} has no reference variant to build a probe set from.")
    tok = manifest.get("tokenizer") or {}
    tokenizer = Tokenizer(root / tok["file"] if tok.get("file") else None,
                          context_length=int(tok.get("context_length", 77)))  # fmt: skip
    crops, ids, n_texts, labels = synthetic_probe_inputs(manifest.get("preprocess"), tokenizer)
    image, text = open_towers(root, ref)
    ref_image = image(Preprocessor(manifest.get("preprocess") or None).normalise(crops), len(crops))
    ref_text = text(ids, len(ids))
    where = f"{name} on {cpu_identity()['cpu']}"
    return write_probe(root, crops, ids, n_texts, labels, ref_image, ref_text, where)


def refresh(bundle: Any) -> Any:
    """Give an older bundle (no probe set, or one that cannot be read) one, from its reference
    variant on this host; the manifest is rewritten atomically with the new files' sha256.
    Returns the reopened bundle."""
    from .bundle import Bundle, Variant, write_manifest

    if bundle.manifest.get("probe"):
        try:
            Probe.load(bundle)
            return bundle
        except IntegrityError:
            pass  # unreadable: made anew below, as the error that names it advises
    variants = map(Variant.from_dict, bundle.manifest.get("variants") or [])
    ref = next((v.id for v in variants if v.is_reference), None)
    if ref in bundle.damaged:  # the probe's reference would come from files failing their sha256
        raise IntegrityError(
            f"bundle {bundle.root}: its reference variant {ref} is damaged "
            f"({'; '.join(bundle.damaged[ref])}), so no probe set can be made from it; "
            "re-download or re-convert the bundle."
        )
    manifest = dict(bundle.manifest)
    folder = Path(bundle.root) / PROBE_DIR
    existed = folder.exists()
    try:
        manifest["probe"] = reference_probe(bundle.root, manifest, "reference variant")
        # The files listed before as they were, plus the probe's: not whatever else lies in
        # the folder now (a .DS_Store listed would refuse the bundle once deleted; an altered
        # graph re-hashed would pass). A bundle from before file tables gets one of every file.
        probe = [manifest["probe"][k] for k in ("images", "texts", "reference_image", "reference_text")]
        write_manifest(bundle.root, manifest, add=probe if manifest.get("files") else None)
    except OSError as exc:  # read-only copy, full disk: the bundle stays as it was
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise InputError(
            f"bundle {bundle.root}: cannot write its probe set ({exc.strerror or exc}: "
            f"{exc.filename or bundle.root}). Copy the bundle to a writable folder and run "
            "`edgeclip verify COPY --refresh` there, or leave out --refresh: until it has a "
            "probe set, only its reference variant is used."
        ) from exc
    return Bundle.open(bundle.root)
