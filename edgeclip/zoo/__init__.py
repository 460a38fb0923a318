"""The model zoo is data: ``models.json`` beside this file, plus the files named in ``EDGECLIP_ZOO``.

``EDGECLIP_ZOO`` holds one or more JSON paths separated by ``os.pathsep``; each has the same
schema as the built-in ``models.json`` (``{"models": {name: entry}}``). A later file's entry
replaces an earlier one of the same name whole (no deep merge), so users can add models or
re-point a built-in one at their own mirror. Every entry is validated when read; a bad one
raises ``InputError`` naming the file and the key.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import InputError, ModelNotFoundError

BUILTIN_ZOO = Path(__file__).with_name("models.json")
ENV_VAR = "EDGECLIP_ZOO"
ARCH_KEYS = (
    "embed_dim", "image_size", "patch_size",
    "vision_width", "vision_layers", "vision_heads",
    "text_width", "text_layers", "text_heads",
    "context_length", "vocab_size", "hidden_act",
)  # fmt: skip
HUB_KINDS = ("hub-onnx", "hf-checkpoint")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# (EDGECLIP_ZOO value, mtimes) -> merged zoo; re-read only when a file or the variable changes.
_cache: dict[tuple, dict[str, dict[str, Any]]] = {}


def _bad(file: Path, key: str, why: str) -> InputError:
    return InputError(
        f"zoo file {file}: {key}: {why}. Fix the entry (schema: edgeclip/zoo/models.json)."
    )


def _validate_file_spec(file: Path, key: str, spec: Any) -> None:
    path = spec if isinstance(spec, str) else spec.get("path") if isinstance(spec, dict) else None
    if not isinstance(path, str) or not path:
        raise _bad(
            file, key, "each file must be a path string or an object with a non-empty 'path'"
        )
    # a file in the repo as the hub names it: "a/b.onnx"; "", "/x", "a//b", "../x" or "a\\b"
    # would be refused by the hub, or, cached, resolve outside the snapshot folder
    if "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise _bad(file, f"{key}.path" if isinstance(spec, dict) else key,
                   f"{path!r} is not a file path inside the repo such as 'onnx/model.onnx' "
                   "(no leading or doubled '/', no '.' or '..', '/' between folders)")  # fmt: skip
    if isinstance(spec, str):
        return
    sha = spec.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise _bad(file, f"{key}.sha256", f"{sha!r} is not 64 lower-case hex digits (or null)")
    size = spec.get("size")
    if size is not None and not (
        isinstance(size, int) and not isinstance(size, bool) and size >= 0
    ):
        raise _bad(file, f"{key}.size", f"{size!r} is not a byte count (or null)")


def _validate_source(file: Path, key: str, src: Any) -> None:
    if not isinstance(src, dict) or not isinstance(src.get("kind"), str):
        raise _bad(file, key, "a source must be an object with a 'kind'")
    if src["kind"] not in HUB_KINDS:
        return  # other kinds (open_clip release assets, ...) are informational here
    if not isinstance(src.get("repo"), str) or src["repo"].count("/") != 1:
        raise _bad(file, f"{key}.repo", f"{src.get('repo')!r} is not a hub repo id 'owner/name'")
    rev = src.get("revision")
    if rev is not None and not (isinstance(rev, str) and _COMMIT.fullmatch(rev)):
        raise _bad(
            file, f"{key}.revision", f"{rev!r} must be a full 40-hex commit hash or null (unpinned)"
        )
    files = src.get("files")
    if not isinstance(files, list) or not files:
        raise _bad(file, f"{key}.files", "must be a non-empty list")
    for i, spec in enumerate(files):
        _validate_file_spec(file, f"{key}.files[{i}]", spec)


def validate_entry(file: Path, name: str, entry: Any) -> None:
    """Raise ``InputError`` naming ``file`` and the key if ``entry`` breaks the zoo schema."""
    key = f"models.{name}"
    if not isinstance(entry, dict):
        raise _bad(file, key, "must be an object")
    for field in ("description", "license"):
        if not isinstance(entry.get(field), str):
            raise _bad(file, f"{key}.{field}", "missing or not a string")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise _bad(file, f"{key}.aliases", "must be a list of strings")
    arch = entry.get("architecture")
    if not isinstance(arch, dict):
        raise _bad(file, f"{key}.architecture", "missing or not an object")
    for k in ARCH_KEYS:
        if k not in arch:
            raise _bad(file, f"{key}.architecture.{k}", "missing (use null when unknown)")
        v = arch[k]
        ok = isinstance(v, str) if k == "hidden_act" else isinstance(v, int) and v > 0
        if v is not None and not ok:
            raise _bad(file, f"{key}.architecture.{k}", f"{v!r} is not valid")
    if "published" in entry and not isinstance(entry["published"], dict):
        raise _bad(file, f"{key}.published", "must be an object")
    sources = entry.get("sources")
    if not isinstance(sources, list) or not sources:
        raise _bad(file, f"{key}.sources", "must be a non-empty list")
    for i, src in enumerate(sources):
        _validate_source(file, f"{key}.sources[{i}]", src)


def _read(file: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(
            f"zoo file {file} (from {ENV_VAR}) does not exist; fix {ENV_VAR}."
        ) from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"zoo file {file} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise _bad(file, "models", 'the file must be an object {"models": {name: entry, ...}}')
    for name, entry in data["models"].items():
        validate_entry(file, name, entry)
    return {
        name: dict(entry, name=name, zoo_file=str(file)) for name, entry in data["models"].items()
    }


def zoo_files() -> list[Path]:
    """The zoo files in merge order: the built-in one, then those in ``EDGECLIP_ZOO``."""
    extra = [Path(p).expanduser() for p in (settings.get(ENV_VAR) or "").split(os.pathsep) if p]
    return [BUILTIN_ZOO, *extra]


def _zoo() -> dict[str, dict[str, Any]]:
    files = zoo_files()
    key = tuple((str(f), f.stat().st_mtime_ns if f.exists() else None) for f in files)
    if key not in _cache:
        merged: dict[str, dict[str, Any]] = {}
        for f in files:
            merged.update(_read(f))
        _cache.clear()
        _cache[key] = merged
    return _cache[key]


def _lookup() -> dict[str, str]:
    """Lower-cased canonical names, aliases and the hub repo ids of the entries' sources ->
    canonical name (names win over aliases, aliases over repo ids)."""
    table: dict[str, str] = {}
    zoo = _zoo()
    for name, entry in zoo.items():  # a user copying the repo id off the hub page gets the model
        for src in entry.get("sources", []):
            if src.get("kind") in HUB_KINDS:
                table.setdefault(src["repo"].lower(), name)
    for name, entry in zoo.items():
        for alias in entry.get("aliases", []):
            table[alias.lower()] = name
    for name in zoo:
        table[name.lower()] = name
    return table


def list_models() -> list[dict[str, Any]]:
    """Every zoo entry (a copy), each with its ``name`` and the ``zoo_file`` it came from."""
    return [copy.deepcopy(e) for e in _zoo().values()]


def resolve_name(name: str) -> str:
    """The canonical zoo name for ``name`` or one of its aliases (case-insensitive)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name {name!r} must be a non-empty string, e.g. 'tinyclip-8m'.")
    table = _lookup()
    found = table.get(name.strip().lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(name.strip().lower(), list(table), n=3, cutoff=0.6)
    hint = ", ".join(dict.fromkeys(table[c] for c in close))  # closest first, as difflib ranks
    raise ModelNotFoundError(
        f"unknown model {name!r}."
        + (f" Did you mean: {hint}?" if hint else "")
        + f" Known models: {', '.join(_zoo())}. A local directory works too: "
        "edgeclip.load('/path/to/bundle_or_checkpoint_dir'). To add your own model to the zoo, "
        f"list a JSON file with the schema of {BUILTIN_ZOO.name} in {ENV_VAR}."
    )


def get_model_info(name: str) -> dict[str, Any]:
    """The zoo entry (a copy) for a name or alias; unknown names raise ``ModelNotFoundError``."""
    return copy.deepcopy(_zoo()[resolve_name(name)])


def find_source(entry: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The first source of ``kind`` ("hub-onnx", "hf-checkpoint", ...) in a zoo entry, or None."""
    for src in entry.get("sources", []):
        if src.get("kind") == kind:
            return src
    return None


__all__ = ["list_models", "get_model_info", "resolve_name", "find_source", "zoo_files"]
