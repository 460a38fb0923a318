"""A bundle is a directory the runtime needs nothing else for: graphs, tokenizer, config, manifest.

The format is described in docs/architecture.md. ``Bundle.open`` verifies every file's sha256
and size against ``manifest.json`` so a corrupt or tampered download is refused, not run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputError, IntegrityError
from .verified import is_verified, marker_for, remember

MANIFEST = "manifest.json"
FORMAT = "edgeclip-bundle"
FORMAT_VERSION = 1
from .backends.catalog import PRECISIONS  # noqa: E402,F401 - re-exported


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_table(directory: str | os.PathLike,
               only: list[str] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """sha256 and size of every file under ``directory`` (or just the relative paths ``only``)
    except the manifest and its temporary copies, by relative path."""
    root = Path(directory)
    paths = [root / rel for rel in only] if only is not None else root.rglob("*")
    table = {}
    for path in sorted(p for p in paths if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST or rel.startswith(MANIFEST + "."):  # a killed write's .tmp is no part
            continue
        table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any],
                   add: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``manifest.json`` into ``directory``, filling in the format fields and the file
    table: of every file there, or (``add``) the manifest's table as it is plus these files."""
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT)
    manifest.setdefault("format_version", FORMAT_VERSION)
    if add is None:
        manifest["files"] = file_table(directory)
    else:  # listed files keep their recorded sha256: an altered one stays refused
        manifest["files"] = {**(manifest.get("files") or {}), **file_table(directory, add)}
    path = Path(directory) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return manifest


@dataclass(frozen=True)
class Tower:
    """One tower of one variant: the file, its input and output names, fixed batch sizes if any,
    and (text) whether the graph takes any sequence length, or else the fixed lengths it was
    exported at, so padding after EOT can be cut."""

    file: str
    input: str
    output: str
    batch_sizes: tuple[int, ...] | None = None
    dynamic_sequence: bool = False
    sequence_lengths: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tower:
        sizes = d.get("batch_sizes")
        return cls(d["file"], d["input"], d["output"], tuple(sizes) if sizes else None,
                   bool(d.get("dynamic_sequence", False)),
                   tuple(int(n) for n in d.get("sequence_lengths") or ()))  # fmt: skip


def tower_files(tower: Tower) -> list[str]:
    """The graph files of ``tower``: one, or one per fixed batch size."""
    if tower.batch_sizes and "{batch}" in tower.file:
        return [tower.file.format(batch=b) for b in tower.batch_sizes]
    return [tower.file]


def _format_version(manifest: dict[str, Any], mpath: Path) -> int:
    try:
        return int(manifest.get("format_version", 0))
    except (TypeError, ValueError):
        raise IntegrityError(f"{mpath}: format_version {manifest.get('format_version')!r} is not a "
                             "number; re-create the bundle.") from None  # fmt: skip


def _outside(rel: Any) -> bool:
    """A manifest path that is not plainly inside the bundle (absolute, or through '..')."""
    path = PurePosixPath(str(rel).replace("\\", "/"))
    return not isinstance(rel, str) or path.is_absolute() or ".." in path.parts or ":" in rel[:2]


def _bad_name(x: Any) -> bool:
    return not isinstance(x, str) or not x


def _counts(x: Any) -> bool:
    """A list of positive integers (batch sizes, sequence lengths)."""
    return isinstance(x, list) and all(type(n) is int and n > 0 for n in x)


def _tower_problems(vid: str, name: str, t: Any) -> list[str]:
    if not isinstance(t, dict):
        return [f"variant {vid!r} has no {name} tower"]
    out = [f"variant {vid!r} {name}.{k} is {t.get(k)!r}, not a name"
           for k in ("file", "input", "output") if _bad_name(t.get(k))]  # fmt: skip
    return out + [f"variant {vid!r} {name}.{k} is {t[k]!r}, not a list of positive integers"
                  for k in ("batch_sizes", "sequence_lengths")
                  if t.get(k) is not None and not _counts(t[k])]  # fmt: skip


def _shape_problems(m: dict[str, Any]) -> list[str]:
    """Fields of the wrong type or missing, which would otherwise fail deep in a load."""
    problems = [f"{k} is not an object" for k in ("tokenizer", "preprocess", "architecture", "probe")
                if m.get(k) is not None and not isinstance(m[k], dict)]  # fmt: skip
    variants = m.get("variants", [])
    if not isinstance(variants, list):
        return [*problems, "variants is not a list"]
    for i, v in enumerate(variants):
        if not isinstance(v, dict):
            problems.append(f"variants[{i}] is not an object")
            continue
        vid = v.get("id") if isinstance(v.get("id"), str) else f"variants[{i}]"
        problems += [f"variant {vid!r} {k} is {v.get(k)!r}, not a name"
                     for k in ("id", "backend", "precision") if _bad_name(v.get(k))]  # fmt: skip
        problems += [f"variant {vid!r} {k} is not an object" for k in ("parity", "gate", "options")
                     if v.get(k) is not None and not isinstance(v[k], dict)]  # fmt: skip
        problems += _tower_problems(vid, "image", v.get("image"))
        problems += _tower_problems(vid, "text", v.get("text"))
    files = m.get("files", {})
    if not isinstance(files, dict):
        return [*problems, "files is not an object"]
    problems += [f"files[{rel!r}] has no sha256 and size" for rel, meta in files.items()
                 if not isinstance(meta, dict) or _bad_name(meta.get("sha256"))
                 or type(meta.get("size")) is not int]  # fmt: skip
    probe = m.get("probe") if isinstance(m.get("probe"), dict) else {}
    return problems + [f"probe.{k} is {probe[k]!r}, not a count" for k in ("n_images", "n_texts")
                       if k in probe and type(probe[k]) is not int]  # fmt: skip


def _manifest_problems(m: dict[str, Any]) -> list[str]:
    """What makes a manifest unusable though it parses: a field of the wrong type, a path
    leaving the bundle, a logit scale that is not a positive number, a crop size the graphs
    were not exported at."""
    shape = _shape_problems(m)
    if shape:
        return shape
    towers = [v.get(t) or {} for v in m.get("variants") or [] for t in ("image", "text")]
    named = [t.get("file") for t in towers] + [(m.get("tokenizer") or {}).get("file")]
    named += list(m.get("files") or {})
    probe = m.get("probe") or {}
    named += [probe.get(k) for k in ("images", "texts", "reference_image", "reference_text")]
    problems = [f"path {rel!r} leaves the bundle" for rel in named if rel is not None and _outside(rel)]
    scale = m.get("logit_scale", 100.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        problems.append(f"logit_scale {scale!r} is not a positive number")
    crop = (m.get("preprocess") or {}).get("image_size")
    exported = (m.get("architecture") or {}).get("image_size")
    if crop is not None and exported is not None and crop != exported:
        problems.append(f"preprocess.image_size {crop!r} differs from the graphs' "
                        f"architecture.image_size {exported!r}")  # fmt: skip
    return problems


@dataclass(frozen=True)
class Variant:
    """One backend × precision compilation of the model, with its measured parity and gate."""

    id: str
    backend: str
    precision: str
    image: Tower
    text: Tower
    parity: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True only for a gate that was measured and passed (no gate recorded is not a pass)."""
        return self.gate.get("passed") is True

    @property
    def is_reference(self) -> bool:
        """The bundle's reference graph: the fp32 export checked against torch, or a prebuilt
        export taken as is. Bundles from before roles were recorded: their ``onnx-fp32``."""
        role = self.options.get("role")
        return role == "reference" if role else self.id == "onnx-fp32"

    @property
    def batch_invariant(self) -> bool:
        """False when the manifest marks the variant batch-dependent (dynamic INT8)."""
        return self.options.get("batch_invariant", True) is not False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Variant:
        return cls(
            id=d["id"],
            backend=d["backend"],
            precision=d["precision"],
            image=Tower.from_dict(d["image"]),
            text=Tower.from_dict(d["text"]),
            parity=d.get("parity") or {},
            gate=d.get("gate") or {},
            options=d.get("options") or {},
        )


class Bundle:
    """A verified bundle directory. Use ``Bundle.open(path)``."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.variants = [Variant.from_dict(v) for v in manifest.get("variants", [])]
        #: variants left out because their own files are missing or altered: id -> problems
        self.damaged: dict[str, list[str]] = {}

    @classmethod
    def is_bundle(cls, path: str | os.PathLike) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> Bundle:
        """Read ``manifest.json``; with ``verify`` check every listed file's size and sha256."""
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise InputError(
                f"{root} is not an edgeclip bundle (no {MANIFEST}); "
                "make one with `edgeclip convert CHECKPOINT -o BUNDLE`."
            )
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IntegrityError(f"{mpath} cannot be read ({exc}); re-create the bundle.") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise InputError(f"{mpath} is not an edgeclip manifest (format={found!r}).")
        if _format_version(manifest, mpath) > FORMAT_VERSION:
            raise InputError(
                f"{root} uses bundle format {manifest['format_version']}, newer than this edgeclip "
                f"understands ({FORMAT_VERSION}); upgrade edgeclip."
            )
        problems = _manifest_problems(manifest)
        if problems:
            raise IntegrityError(f"{mpath} is inconsistent: " + "; ".join(problems)
                                 + ". It was edited or damaged: re-create the bundle.")  # fmt: skip
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self, full: bool = False) -> None:
        """Check every listed file; leave out the variants whose own files are damaged.

        ``IntegrityError`` naming every missing, resized or altered file when a shared file
        (tokenizer, probe set) is damaged or no variant is left. Sizes are always checked.
        Contents are hashed the first time and whenever a file's size or mtime changes
        (``edgeclip.verified`` remembers the rest); ``full`` hashes all.
        """
        problems = self._file_problems(full) + self._unlisted_graphs()  # (file, what is wrong)
        owners = self._variant_folders()
        damaged: dict[str, list[str]] = {}
        shared = False
        for rel, why in problems:
            owner = owners.get(str(Path(rel).parent))
            if owner is None:
                shared = True
            else:
                damaged.setdefault(owner, []).append(f"{rel}: {why}")
        if shared or (damaged and len(damaged) == len(self.variants)):
            raise IntegrityError(
                f"bundle {self.root} failed verification:\n  "
                + "\n  ".join(f"{rel}: {why}" for rel, why in problems)
                + "\nThe files were altered or the copy is incomplete: re-download or re-convert it."
            )
        self.damaged = damaged
        self.variants = [v for v in self.variants if v.id not in damaged]

    def _variant_folders(self) -> dict[str, str]:
        """Folder -> the one variant whose graphs live there (shared folders are left out)."""
        users: dict[str, set[str]] = {}
        for v in self.variants:
            for tower in (v.image, v.text):
                users.setdefault(str(Path(tower.file).parent), set()).add(v.id)
        return {f: ids.pop() for f, ids in users.items() if len(ids) == 1 and f != "."}

    def _unlisted_graphs(self) -> list[tuple[str, str]]:
        """Graphs a variant names that the file table does not list, so no sha256 covers them."""
        table = self.manifest.get("files")
        if not table:
            return []  # a bundle from before file tables: nothing to hold them to
        return [(rel, "not in the manifest's file table, so its sha256 cannot be checked")
                for v in self.variants for t in (v.image, v.text) for rel in tower_files(t)
                if rel not in table]  # fmt: skip

    def _file_problems(self, full: bool) -> list[tuple[str, str]]:
        problems = []
        for rel, meta in self.manifest.get("files", {}).items():
            path = self.root / rel
            if not path.is_file():
                problems.append((rel, "missing"))
                continue
            stat = path.stat()
            marker = marker_for(path)
            if stat.st_size != meta["size"]:
                problems.append((rel, f"size {stat.st_size}, manifest says {meta['size']}"))
            elif not full and is_verified(marker, stat, meta["sha256"]):
                continue
            elif sha256_file(path) != meta["sha256"]:
                problems.append((rel, "sha256 differs from the manifest"))
            else:
                remember(marker, stat, meta["sha256"])
        return problems

    @property
    def digest(self) -> str:
        """sha256 of the manifest's file table: changes whenever any bundle file does."""
        table = json.dumps(self.manifest.get("files", {}), sort_keys=True).encode()
        return hashlib.sha256(table).hexdigest()

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.root.name

    @property
    def logit_scale(self) -> float:
        return float(self.manifest.get("logit_scale", 100.0))

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.manifest.get("preprocess") or {})

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.manifest.get("tokenizer") or {})

    @property
    def embed_dim(self) -> int | None:
        return (self.manifest.get("architecture") or {}).get("embed_dim")

    def path_of(self, rel: str) -> Path:
        return self.root / rel

    def find(self, backend: str | None = None, precision: str | None = None) -> list[Variant]:
        """Variants matching the backend and precision (None matches any)."""
        return [
            v
            for v in self.variants
            if (backend is None or v.backend == backend)
            and (precision is None or v.precision == precision)
        ]

    def __repr__(self) -> str:
        ids = ", ".join(v.id for v in self.variants)
        return f"Bundle({str(self.root)!r}, variants=[{ids}])"
