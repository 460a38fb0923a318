"""``edgeclip.load``: a zoo name, a bundle directory or a checkpoint directory → a ready ``EdgeClip``."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

from . import settings
from .bundle import Bundle, Variant
from .errors import BackendUnavailableError, InputError, IntegrityError, ModelNotFoundError
from .model import EdgeClip
from .paths import converted_dir
from .selection import check_threads, select


def select_variant(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    device: str = "auto",
    verify: bool = True,
) -> tuple[Variant, str]:
    """The variant ``load`` would run on this host and why (``edgeclip.selection.select``)."""
    chosen = select(bundle, backend, precision, threads, device, verify)
    return chosen.variant, chosen.reason


def _convert_once(checkpoint: Path, out: Path, name: str | None = None) -> Path:
    """Convert a checkpoint into ``out`` unless a bundle is already there (needs ``edgeclip[convert]``)."""
    if Bundle.is_bundle(out):
        return out
    from .stages import stage

    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError(
            f"{checkpoint} is a checkpoint, not a bundle; converting it needs torch: "
            f"`pip install edgeclip[convert]`, or convert elsewhere with "
            f"`edgeclip convert {checkpoint} -o BUNDLE` and load the bundle."
        )
    return Path(stage("convert")(checkpoint, out, name=name))


def _bundle_for_checkpoint(path: Path) -> Path:
    """A checkpoint directory's bundle, converted once and cached by the files' names, sizes, mtimes."""
    stamp = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        stamp.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return _convert_once(path, converted_dir() / f"{path.name}-{stamp.hexdigest()[:16]}")


def _is_checkpoint_dir(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        or any(path.glob("*.pt"))
        or any(path.glob("*.safetensors"))
    )


def resolve_bundle(name_or_path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Find (building once if needed) the bundle behind a zoo name, bundle dir or checkpoint dir."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        # "" would be Path("."): the current folder, loaded as if it had been named
        raise InputError(f"the model name or path is {name_or_path!r}: name a zoo model such as "
                         "'tinyclip-8m' (`edgeclip models` lists them) or a directory.")  # fmt: skip
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.exists():
        if Bundle.is_bundle(path):
            return Bundle.open(path, verify=verify)
        if path.is_dir() and _is_checkpoint_dir(path):
            return Bundle.open(_bundle_for_checkpoint(path), verify=verify)
        raise InputError(
            f"{path} is neither an edgeclip bundle (manifest.json) nor a CLIP checkpoint directory "
            "(config.json + weights, or an open_clip .pt + config JSON)."
        )
    return _open_zoo_bundle(zoo_info(name_or_path), verify)


def _open_zoo_bundle(info: dict, verify: bool) -> Bundle:
    """A zoo model's bundle is edgeclip's own cache, built from files kept in the HF cache: one
    found damaged (a file altered, truncated or deleted) is rebuilt once, not refused for ever."""
    path = _bundle_for_zoo(info)
    try:
        return Bundle.open(path, verify=verify)
    except IntegrityError as exc:
        from .hub_bundle import discard_bundle

        lines = str(exc).splitlines()
        why = "; ".join(x.strip() for x in lines[1:] if x.startswith(" ")) or lines[0]
        warnings.warn(f"the bundle {path} is damaged ({why}): it is rebuilt from the downloaded "
                      "files.", RuntimeWarning, stacklevel=4)  # fmt: skip
        discard_bundle(path)
    return Bundle.open(_bundle_for_zoo(info), verify=verify)


def zoo_info(name_or_path: str | os.PathLike) -> dict:
    """The zoo entry of a name that is no existing path; a name that looks like a path (and
    so was one, missing) says that it does not exist rather than that no model has the name."""
    from .zoo import get_model_info

    try:
        return get_model_info(str(name_or_path))
    except ModelNotFoundError as exc:
        text = str(name_or_path)
        # "org/name" may be a zoo alias (a hub repo id); anything more path-like was a path
        if text.startswith((".", "~", os.sep)) or text.count(os.sep) >= 2:
            where = Path(text).expanduser().absolute()
            try:  # "./tinyclip-8m" for the zoo model: say how it is named
                name = get_model_info(Path(text).name)["name"]
                hint = f" The zoo model {name!r} is named without a path: load({name!r})."
            except (ModelNotFoundError, InputError):
                hint = " `edgeclip models` lists the zoo."
            raise ModelNotFoundError(
                f"{text!r} is no zoo model, and as a path ({where}) it does not exist.{hint}"
            ) from exc
        raise


def _bundle_for_zoo(info: dict) -> Path:
    """A zoo model's bundle: the prebuilt ONNX source when there is one (torch-free), else the
    checkpoint, downloaded and converted once (needs ``edgeclip[convert]``)."""
    from .hub_bundle import bundle_from_hub_onnx, default_cache_root
    from .zoo import find_source

    onnx_src = find_source(info, "hub-onnx")
    if onnx_src is not None and importlib.util.find_spec("onnx") is not None:
        return bundle_from_hub_onnx(info["name"], info, onnx_src, default_cache_root())
    ckpt_src = find_source(info, "hf-checkpoint")
    if ckpt_src is None:
        raise ModelNotFoundError(
            f"zoo model {info['name']!r} has no source this host can use"
            + (" (its ONNX source needs `pip install edgeclip[onnx]`)." if onnx_src else ".")
        )
    out = default_cache_root() / f"{info['name']}@{ckpt_src.get('revision') or 'main'}"
    if Bundle.is_bundle(out):
        return out
    from .hub import fetch_files

    paths = fetch_files(
        ckpt_src["repo"], ckpt_src.get("revision"), ckpt_src["files"], model_name=info["name"]
    )
    checkpoint_dir = next(iter(paths.values())).parent
    return _convert_once(checkpoint_dir, out, name=info["name"])


def _check_counts(batch_size: object, threads: object) -> None:
    """``batch_size`` a positive int; ``threads`` None, 0 (the runtime's default) or positive."""
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(batch_size) or batch_size < 1:  # type: ignore[operator]
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    check_threads(threads)


def load(
    name_or_path: str | os.PathLike = "tinyclip-8m",
    backend: str | None = "auto",
    precision: str | None = "auto",
    threads: int | None = None,
    device: str | None = "auto",
    batch_size: int = 32,
    verify: bool = True,
    max_pixels: int | None | str = "default",
) -> EdgeClip:
    """Load a CLIP for inference on whichever backend is installed.

    ``name_or_path``: a zoo name (``edgeclip.list_models()``; downloaded once into the Hugging
    Face cache, then offline), a bundle directory (``edgeclip convert``), or a checkpoint
    directory (converted once; needs ``edgeclip[convert]``). ``backend``: 'auto', 'onnx',
    'openvino', 'litert' or 'torch'. ``precision``: 'auto', 'fp32', 'fp16', 'int8', ...
    ``threads``: intra-op threads (default: the runtime's). ``verify``: check every file's
    sha256 against the bundle manifest, and run the variant's probe set on this host the first
    time it is used here (``edgeclip.verify``): a variant that misses its gate on this machine
    is never picked and is refused when asked for. ``verify=False`` skips both.
    ``max_pixels``: the most width × height an encoded image may declare before it is decoded
    (default ``edgeclip.images.DEFAULT_MAX_PIXELS``, Pillow's 89.5 MP; ``None``: no limit, for
    files you trust).
    """
    _check_counts(batch_size, threads)
    settings.check_all()  # a bad EDGECLIP_* value is refused by name, before any session
    for what, value in (("backend", backend), ("precision", precision), ("device", device)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{what} must be a name such as 'auto', got {type(value).__name__} "
                             f"{value!r}")  # fmt: skip
    # None means "you choose", as "auto" does
    backend, precision, device = backend or "auto", precision or "auto", device or "auto"
    bundle = resolve_bundle(name_or_path, verify=verify)
    chosen = select(bundle, backend, precision, threads, device, verify)
    return EdgeClip(
        bundle,
        chosen.variant,
        chosen.opener,
        batch_size=batch_size,
        backend_info=chosen.variant.backend,
        selection_reason=chosen.reason,
        verification=chosen.status,
        max_pixels=max_pixels,
    )
