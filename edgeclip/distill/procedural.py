"""Procedural image-caption data: coloured shapes on plain noisy backgrounds, numpy only.

Each item is a pure function of ``(seed, index)``, so any subset can be regenerated anywhere
(other processes, a resumed run) without storing images. Some colour-shape compositions are
held out of training entirely; ``eval_set`` draws them (and the seen ones) for zero-shot
evaluation with ``class_prompts``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from edgeclip.errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "heart")
COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (235, 215, 40),
    "purple": (135, 55, 180),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "brown": (125, 75, 35),
}
COLOUR_NAMES = tuple(COLOURS)
# Object side as a fraction of the image side. Smaller objects (0.32) left the teacher unable to
# learn shape in a few CPU minutes: at patch 16 a 20 px shape is mostly inside one patch.
SIZES = {"small": 0.42, "large": 0.62}
POSITIONS = ("centre", "top left", "top right", "bottom left", "bottom right")
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (168, 158, 128),
    "slate": (98, 108, 124),
    "dark": (62, 62, 68),
}
COUNT_WORDS = {2: "two", 3: "three"}
PLURALS = {"cross": "crosses"}
# Colour-shape pairs never drawn for training (one per colour, plus two), the zero-shot test.
HELD_OUT = (
    ("red", "square"),
    ("green", "triangle"),
    ("blue", "star"),
    ("yellow", "hexagon"),
    ("purple", "cross"),
    ("orange", "diamond"),
    ("white", "heart"),
    ("brown", "circle"),
    ("red", "hexagon"),
    ("orange", "triangle"),
)
TEMPLATES = (
    "a photo of a {size} {colour} {shape}",
    "a {colour} {shape}",
    "a {colour} {shape} in the {position}",
    "a {size} {colour} {shape} on a {background} background",
    "there is a {colour} {shape} in the {position} of the image",
    "an image of a {colour} {shape}",
    "a drawing of a {size} {colour} {shape}",
    "a {shape} that is {colour}",
    "a photo of a {colour} {shape}",
)
COUNT_TEMPLATES = ("a photo of {count} {colour} {shapes}", "{count} {size} {colour} {shapes}")
# Captions that name one attribute. A shape-only caption's object is drawn in a colour that no
# caption names (near-black), not in a palette colour: drawn in seen pairs' colours, "a photo of a
# square" never met a red one, so on a held-out red square every other shape's prompt (all seen in
# red) outscored it.
COLOUR_ONLY_TEMPLATES = ("a photo of a {colour} object",)
SHAPE_ONLY_TEMPLATES = ("a photo of a {shape}", "a {shape}", "a drawing of a {shape}")
UNNAMED = "unnamed"
OBJECT_RGB = {**COLOURS, UNNAMED: (28, 26, 30)}
# Bumped whenever an item's image or caption for a given (seed, index) changes: cached teachers
# and teacher embeddings are keyed by it, so a stale one is never reused.
DATA_VERSION = 3
ROTATIONS = np.linspace(-10.0, 10.0, 5)
NOISE_SIGMA = 8.0
_AN = re.compile(r"(^|\s)a ([aeiou])")


def _polygon(shape: str) -> list[tuple[float, float]] | None:
    """Outline in [-1, 1]² (y down); ``None`` for the circle, drawn as an ellipse."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(0.0, -0.95), (0.95, 0.8), (-0.95, 0.8)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    if shape == "hexagon":
        return [(0.95 * math.cos(a), 0.95 * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.32
        return [(-w, -0.9), (w, -0.9), (w, -w), (0.9, -w), (0.9, w), (w, w), (w, 0.9), (-w, 0.9),
                (-w, w), (-0.9, w), (-0.9, -w), (-w, -w)]  # fmt: skip
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return list(zip(x / 17.0, (y + 2.5) / 17.0))
    raise InputError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@cache
def _mask(shape: str, side: int, rotation: float) -> np.ndarray:
    """Anti-aliased alpha mask (side × side float32 in [0, 1]), drawn at 4× and downsampled."""
    big = side * 4
    im = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(im)
    poly = _polygon(shape)
    half = big / 2
    if poly is None:
        d.ellipse([big * 0.08, big * 0.08, big * 0.92, big * 0.92], fill=255)
    else:
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        d.polygon(
            [
                (half + 0.92 * half * (c * x - s * y), half + 0.92 * half * (s * x + c * y))
                for x, y in poly
            ],
            fill=255,
        )
    return np.asarray(im.resize((side, side), Image.BOX), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Item:
    """What one procedural image shows."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    count: int
    caption: str


def _centre(position: str, side: int, image_size: int) -> tuple[float, float]:
    if position == "centre":
        return image_size / 2, image_size / 2
    margin = side / 2 + 1
    y = margin if position.startswith("top") else image_size - margin
    x = margin if position.endswith("left") else image_size - margin
    return x, y


def render(item: Item, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``item`` as an (S, S, 3) uint8 image, randomness (jitter, noise) from ``rng``."""
    bg = np.asarray(BACKGROUNDS[item.background], np.float32) + rng.uniform(-15, 15, 3).astype(
        np.float32
    )
    img = np.empty((image_size, image_size, 3), np.float32)
    img[:] = bg
    img += rng.standard_normal((image_size, image_size, 3), dtype=np.float32) * NOISE_SIGMA
    colour = np.asarray(OBJECT_RGB[item.colour], np.float32) + rng.uniform(-20, 20, 3).astype(
        np.float32
    )
    size = "small" if item.count > 1 else item.size
    side = max(4, int(round(SIZES[size] * image_size)))
    if item.count == 1:
        positions = [item.position]
    else:
        positions = [POSITIONS[k] for k in rng.choice(len(POSITIONS), item.count, replace=False)]
    for pos in positions:
        alpha = _mask(item.shape, side, float(ROTATIONS[rng.integers(len(ROTATIONS))]))[..., None]
        cx, cy = _centre(pos, side, image_size)
        x0 = int(round(cx - side / 2 + rng.integers(-2, 3)))
        y0 = int(round(cy - side / 2 + rng.integers(-2, 3)))
        x0, y0 = min(max(x0, 0), image_size - side), min(max(y0, 0), image_size - side)
        patch = img[y0 : y0 + side, x0 : x0 + side]
        patch += alpha * (colour - patch)
    return np.clip(img, 0, 255).astype(np.uint8)


def caption_for(item: Item, template: str) -> str:
    """Fill ``template`` with the item's words."""
    text = template.format(
        colour=item.colour, shape=item.shape, size=item.size, position=item.position,
        background=item.background, count=COUNT_WORDS.get(item.count, str(item.count)),
        shapes=PLURALS.get(item.shape, item.shape + "s"),
    )  # fmt: skip
    return _AN.sub(r"\1an \2", text)


class ProceduralCaptions:
    """``size`` procedurally drawn (image, caption) pairs, item ``i`` a pure function of (seed, i).

    ``split="train"`` never draws a ``held_out`` colour-shape pair. ``max_count`` > 1 draws
    that many copies of the object in some items (captioned "two red circles").
    ``partial_rate`` of captions name one attribute: ``shape_only_share`` of those the shape
    (the object then drawn in the ``UNNAMED`` colour), the rest the colour.
    """

    def __init__(
        self,
        size: int = 50_000,
        seed: int = 0,
        image_size: int = 64,
        *,
        held_out: tuple[tuple[str, str], ...] = HELD_OUT,
        max_count: int = 1,
        count_rate: float = 0.15,
        partial_rate: float = 0.3,
        shape_only_share: float = 2 / 3,
    ):
        if size <= 0:
            raise InputError(f"procedural data size must be > 0, got {size}")
        if image_size < 16:
            raise InputError(f"procedural image_size must be >= 16 px, got {image_size}")
        self.size, self.seed, self.image_size = int(size), int(seed), int(image_size)
        self.held_out = frozenset(held_out)
        self.pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in self.held_out]
        if not self.pairs:
            raise InputError("every colour-shape pair is held out; nothing left to train on")
        self.max_count, self.count_rate, self.partial_rate = max_count, count_rate, partial_rate
        self.shape_only_share = shape_only_share

    def __len__(self) -> int:
        return self.size

    def item(self, index: int) -> tuple[np.ndarray, Item]:
        """Image (S, S, 3) uint8 and its description."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} procedural items")
        rng = np.random.default_rng((self.seed, index))
        colour, shape = self.pairs[rng.integers(len(self.pairs))]
        count = 1
        if self.max_count > 1 and rng.random() < self.count_rate:
            count = int(rng.integers(2, self.max_count + 1))
        item = Item(
            colour, shape, tuple(SIZES)[rng.integers(len(SIZES))], POSITIONS[rng.integers(len(POSITIONS))],
            tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], count, "",
        )  # fmt: skip
        if count > 1:
            template = COUNT_TEMPLATES[rng.integers(len(COUNT_TEMPLATES))]
        elif rng.random() < self.partial_rate:
            pool = (
                SHAPE_ONLY_TEMPLATES
                if rng.random() < self.shape_only_share
                else COLOUR_ONLY_TEMPLATES
            )
            template = pool[rng.integers(len(pool))]
            if pool is SHAPE_ONLY_TEMPLATES:
                item = replace(item, colour=UNNAMED)
        else:
            template = TEMPLATES[rng.integers(len(TEMPLATES))]
        item = replace(item, caption=caption_for(item, template))
        return render(item, self.image_size, rng), item

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        img, item = self.item(index)
        return img, item.caption

    def batch(self, indices) -> tuple[np.ndarray, list[str]]:
        """Images (N, S, S, 3) uint8 and captions for ``indices``."""
        out = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        caps = []
        for k, i in enumerate(indices):
            out[k], c = self[int(i)]
            caps.append(c)
        return out, caps


def class_prompts(
    template: str = "a photo of a {colour} {shape}",
) -> tuple[list[str], list[tuple[str, str]]]:
    """One prompt per colour-shape pair (64 classes) and the pairs in the same order."""
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    return [template.format(colour=c, shape=s) for c, s in pairs], pairs


def eval_set(
    n_per_held_out: int = 200,
    n_per_seen: int = 20,
    seed: int = 10_000,
    image_size: int = 64,
    held_out: tuple[tuple[str, str], ...] = HELD_OUT,
) -> dict[str, np.ndarray]:
    """Single-object test images for every colour-shape pair.

    Returns ``images`` (N, S, S, 3) uint8, ``label`` (index into ``class_prompts()``),
    ``held_out`` (bool: the pair never appears in training), ``shape`` and ``colour`` indices.
    """
    _, pairs = class_prompts()
    ho = set(held_out)
    imgs, labels, flags = [], [], []
    for k, (c, s) in enumerate(pairs):
        n = n_per_held_out if (c, s) in ho else n_per_seen
        for j in range(n):
            rng = np.random.default_rng((seed, k, j))
            item = Item(c, s, tuple(SIZES)[rng.integers(len(SIZES))], POSITIONS[rng.integers(len(POSITIONS))],
                        tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], 1, "")  # fmt: skip
            imgs.append(render(item, image_size, rng))
            labels.append(k)
            flags.append((c, s) in ho)
    labels_a = np.asarray(labels, np.int64)
    return {
        "images": np.stack(imgs) if imgs else np.zeros((0, image_size, image_size, 3), np.uint8),
        "label": labels_a,
        "held_out": np.asarray(flags, bool),
        "shape": labels_a % len(SHAPES),
        "colour": labels_a // len(SHAPES),
    }
