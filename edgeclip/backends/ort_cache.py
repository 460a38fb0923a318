"""ONNX Runtime's optimised graphs, cached per host, so a second load skips graph optimisation.

ONNX Runtime optimises a graph every time a session starts; for TinyCLIP-8M that is most of a
cold start (onnx-int8's image tower: 0.125 s to build from the bundle's graph, 0.021 s from the
optimised one, AMD EPYC AVX-512 VNNI). With ``optimized_model_filepath`` it writes the result
once. At ``ORT_ENABLE_ALL`` that result holds layout and kernel choices for this CPU and this
ONNX Runtime, so an entry is keyed on the graph's sha256, the ONNX Runtime version and the CPU
(model and kernel ISA flags), and records the sha256 of its own bytes. A corrupt, truncated or
foreign entry is detected, never used, and rebuilt; an unwritable cache folder means no cache,
with one warning. ``EDGECLIP_ORT_CACHE=0`` turns it off.

Entries live in ``edgeclip_home()/ort-cache/<key>/``: ``model-<sha16>.onnx``, its initializers
of 1 MiB and more in ``init-<uuid>.tmp.data``, and ``meta.json``, which names both with their
sha256. ONNX Runtime maps an external initializer file instead of reading it, so the rows of the
text tower's token embedding that no prompt uses never become resident: a later load of
TinyCLIP-8M's onnx-int8 peaks at 101 MiB instead of 194, same outputs (AMD EPYC with AVX-512
VNNI, ``benchmarks/results/epyc-avx512-vnni-2core/memory_stages.md``). The data file keeps the
``.tmp`` mark of a build in progress because the graph records its name, so another process's
cleanup spares it. Files are renamed into place, meta last, so
a reader sees a complete entry or none, and two processes building at once cannot mix them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import settings

SCHEMA = 2  # 2: initializers in an external file
_warned: set[str] = set()


def identity(graph: Path) -> dict[str, Any]:
    """What an optimised graph depends on: the source graph, ONNX Runtime and the CPU."""
    import onnxruntime as ort

    from ..verified import known_sha256
    from ..verify import cpu_identity

    cpu = cpu_identity()
    return {"schema": SCHEMA, "graph_sha256": known_sha256(graph), "onnxruntime": ort.__version__,
            "cpu": cpu["cpu"], "isa": cpu["isa"], "level": "ORT_ENABLE_ALL"}  # fmt: skip


def entry_folder(ident: dict[str, Any]) -> Path:
    from ..paths import edgeclip_home

    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return edgeclip_home() / "ort-cache" / key


def _warn_once(folder: Path, why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"ONNX Runtime session cache in {folder}: {why}", RuntimeWarning, stacklevel=4)


def valid_entry(folder: Path, ident: dict[str, Any]) -> Path | None:
    """The cached graph when ``meta.json`` matches ``ident`` and the file's bytes match their
    recorded sha256; else None (missing, foreign, truncated or corrupt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        model = folder / str(meta["file"])
        if meta.get("identity") != ident or model.parent != folder:
            return None
        from ..bundle import sha256_file

        parts = [(model, meta["size"], meta["sha256"])]
        if meta.get("data"):
            data = folder / str(meta["data"]["file"])
            if data.parent != folder:
                return None
            parts.append((data, meta["data"]["size"], meta["data"]["sha256"]))
        if any(f.stat().st_size != size for f, size, _ in parts):
            return None
        return model if all(sha256_file(f) == digest for f, _, digest in parts) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _discard(folder: Path) -> None:
    """Drop a stale entry; another process's build in progress (``*.tmp*``) is left alone unless
    it is an hour old (a killed build)."""
    import time

    for f in folder.glob("*"):
        try:
            if ".tmp" not in f.name or time.time() - f.stat().st_mtime > 3600:
                f.unlink()
        except OSError:
            pass


def _drop_superseded(folder: Path, ident: dict[str, Any]) -> None:
    """Remove the entries of this graph that an older cache schema wrote (schema 1 held the
    weights inside the graph: about 100 MB per variant that nothing reads any more). Entries of
    other ONNX Runtime versions stay: another environment may share this cache."""
    import shutil

    for other in folder.parent.iterdir():
        try:
            old = json.loads((other / "meta.json").read_text())["identity"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (other != folder and old.get("graph_sha256") == ident["graph_sha256"]
                and old.get("schema") != SCHEMA):  # fmt: skip
            shutil.rmtree(other, ignore_errors=True)


def _publish(folder: Path, tmp: Path, data: Path, ident: dict[str, Any]) -> Path:
    """Give the freshly written graph its final name, then point ``meta.json`` at it and at
    its initializer file (when ONNX Runtime wrote one); returns the graph's path."""
    from ..bundle import sha256_file

    digest = sha256_file(tmp)
    model = folder / f"model-{digest[:16]}.onnx"
    os.replace(tmp, model)
    meta = {"identity": ident, "file": model.name, "sha256": digest, "size": model.stat().st_size}
    if data.is_file():
        meta["data"] = {"file": data.name, "sha256": sha256_file(data), "size": data.stat().st_size}
    meta_tmp = folder / f"meta.{os.getpid()}.{threading.get_ident()}.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, folder / "meta.json")
    return model


def _from_entry(folder: Path, ident: dict[str, Any], make_options: Callable[[], Any],
                providers: list) -> Any:  # fmt: skip
    """A session on the valid entry in ``folder``, or None (no entry, or one ONNX Runtime
    cannot read: it is rebuilt)."""
    cached = valid_entry(folder, ident)  # None also when the folder cannot be read
    return None if cached is None else _open_cached(cached, folder, make_options, providers)


def _open_cached(model: Path, folder: Path, make_options: Callable[[], Any],
                 providers: list) -> Any:  # fmt: skip
    """A session on an entry's graph (already optimised), or None if ONNX Runtime cannot
    read it (the entry is then rebuilt)."""
    import onnxruntime as ort

    opts = make_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done already
    try:
        return ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - a file ONNX Runtime cannot read is rebuilt
        _warn_once(folder, f"cached graph unreadable ({str(exc)[:120]}); rebuilding it")
        return None


def create_session(graph: Path, make_options: Callable[[], Any], providers: list) -> Any:
    """An ``InferenceSession`` for ``graph``, from the cached optimised graph when there is a
    valid one, else built from ``graph`` and (best effort) cached for next time."""
    import onnxruntime as ort

    if settings.get("EDGECLIP_ORT_CACHE") == "0":
        return ort.InferenceSession(str(graph), sess_options=make_options(), providers=providers)
    ident = identity(graph)
    folder = entry_folder(ident)
    session = _from_entry(folder, ident, make_options, providers)
    if session is not None:
        return session
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _discard(folder)
        tmp = folder / f"build.{os.getpid()}.{threading.get_ident()}.tmp.onnx"
        tmp.touch()
        data = folder / f"init-{uuid.uuid4().hex}.tmp.data"
    except OSError as exc:
        _warn_once(folder, f"not writable ({exc.strerror or exc}); sessions are built uncached")
        return ort.InferenceSession(str(graph), sess_options=make_options(), providers=providers)
    opts = make_options()
    opts.optimized_model_filepath = str(tmp)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                  str(1 << 20))  # fmt: skip
    try:
        session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
    except Exception:  # noqa: BLE001 - e.g. the write failed; a broken graph raises again below
        tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        return ort.InferenceSession(str(graph), sess_options=make_options(), providers=providers)
    try:
        model = _publish(folder, tmp, data, ident)
        _drop_superseded(folder, ident)
    except OSError as exc:
        _warn_once(folder, f"could not be written ({exc.strerror or exc}); not cached")
        tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        return session
    # The session just built holds every weight in memory; the entry's maps them, so a process
    # that built the cache (a server's first start) holds what later ones do. The files were
    # hashed as they were published: no second check.
    return _open_cached(model, folder, make_options, providers) or session
