"""Read the files of a ``hub-onnx`` source as fetched into the HF cache, or say which one is not
what the zoo entry promised (a combined CLIPModel ONNX export, config.json, preprocessor config).

An export too big for one protobuf keeps its weights in external data files beside the graph.
In the HF cache those are symlinks into ``blobs/``, which ``onnx.load`` refuses (it reads no
external data through a link), so the weights are read here instead: only from files the zoo
entry lists, fetched and verified, at the offsets the graph names.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from .errors import InputError
from .preprocess import DEFAULT_CONFIG, Preprocessor, hf_to_cfg


def layout_error(model_name: str, source: dict, file: str, why: str) -> InputError:
    """A hub repository whose files are not what a ``hub-onnx`` source needs."""
    return InputError(
        f"zoo model {model_name!r}: {source['repo']}@{source.get('revision') or 'main'}/{file} "
        f"{why}. A hub-onnx source must name a combined transformers CLIPModel ONNX export (role "
        "'model'), its external data files if it has any, and its config.json and "
        "preprocessor_config.json: check the zoo entry's repo, revision and files, or load a "
        "local bundle with edgeclip.load('/path/to/bundle')."
    )


def read_json(model_name: str, source: dict, roles: dict, paths: dict, role: str) -> dict:
    """The JSON object of the file with ``role`` ({} when the source lists none)."""
    if role not in roles:
        return {}
    try:
        data = json.loads(paths[roles[role]].read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise layout_error(model_name, source, roles[role], f"is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        why = f"holds a JSON {type(data).__name__}, not an object {{...}}"
        raise layout_error(model_name, source, roles[role], why)
    return data


def preprocess_config(model_name: str, source: dict, roles: dict, pp: dict) -> dict[str, Any]:
    """The bundle's preprocess block from the repo's preprocessor config, checked whole now."""
    try:
        preprocess = {**DEFAULT_CONFIG, **hf_to_cfg(pp)}  # the one HF mapping (strict)
        Preprocessor(preprocess, threads=1)
    except (InputError, TypeError, ValueError) as exc:  # a string where numbers go, ...
        file = roles.get("preprocessor", "preprocessor_config.json")
        why = f"is not usable ({str(exc).rstrip('.')})"
        raise layout_error(model_name, source, file, why) from exc
    return preprocess


def load_combined(onnx: Any, model_name: str, source: dict, roles: dict, paths: dict) -> Any:
    """The combined graph with every weight in memory."""
    file = roles["model"]
    path = paths[file]
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise
    except Exception as exc:  # protobuf's DecodeError, ...
        with open(path, "rb") as fh:
            lfs = fh.read(40).startswith(b"version https://git-lfs")
        why = ("is a Git LFS pointer, not the file: the hub or mirror serves pointers" if lfs
               else f"is not an ONNX model ({type(exc).__name__}: {exc})")  # fmt: skip
        raise layout_error(model_name, source, file, why) from exc
    _load_external_data(onnx, model, model_name, source, file, paths)
    return model


def _load_external_data(onnx: Any, model: Any, model_name: str, source: dict, file: str,
                        paths: dict) -> None:  # fmt: skip
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        name = posixpath.normpath(posixpath.join(posixpath.dirname(file), info.location))
        if name not in paths:
            why = (f"keeps the weights of {tensor.name!r} in {name!r}, which the zoo entry does "
                   f"not list: add {{\"path\": \"{name}\"}} to its files")  # fmt: skip
            raise layout_error(model_name, source, file, why)
        data = _read_span(Path(paths[name]), info.offset or 0, info.length)
        if data is None:
            why = f"is shorter than the graph says (weights of {tensor.name!r})"
            raise layout_error(model_name, source, name, why)
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _read_span(path: Path, offset: int, length: int | None) -> bytes | None:
    """``length`` bytes (None: to the end) of ``path`` from ``offset``; None if it is shorter."""
    with open(path, "rb") as fh:  # a snapshot symlink to a verified blob
        size = fh.seek(0, 2)
        if offset > size or (length is not None and offset + length > size):
            return None
        fh.seek(offset)
        return fh.read() if length is None else fh.read(length)


__all__ = ["layout_error", "load_combined", "preprocess_config", "read_json"]
