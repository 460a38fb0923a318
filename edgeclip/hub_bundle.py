"""Turn a prebuilt ONNX repository on the hub (``hub-onnx`` zoo source) into an edgeclip bundle.

Such repositories (e.g. onnx-community's TinyCLIP export) hold one combined transformers
``CLIPModel`` graph: inputs ``input_ids``, ``pixel_values``, ``attention_mask``; outputs
``logits_per_image``, ``logits_per_text``, ``text_embeds``, ``image_embeds``. We split it with
``onnx.utils.extract_model`` into an image tower (pixel_values -> image_embeds) and a text tower
(input_ids, plus attention_mask only if the text subgraph reads it -> text_embeds), so a device
needs neither torch nor the other tower to embed one modality. No torch is needed here either:
only ``onnx`` (and ``onnxruntime``, optionally, to measure the logit scale).

The combined export's ``image_embeds`` / ``text_embeds`` are already L2-normalised; the runtime
normalises again, which changes nothing.

Logit scale, in order of preference:
1. an initializer (or Constant) whose name contains ``logit_scale``: the checkpoint's
   parameter, exp'd here and clamped at 100 as CLIP does;
2. measured: run the combined graph once on a dummy pair with onnxruntime and divide
   ``logits_per_image`` by the cosine of the two embeddings (exact; it is how the graph uses it);
3. ``exp(config.json["logit_scale_init_value"])``: the *initial* value (2.6592 -> 14.3), a last
   resort that is wrong for trained models; the manifest records which one was used.
"""

from __future__ import annotations

import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import BackendUnavailableError, EdgeclipError, InputError
from .hub import fetch_files
from .hub_errors import DISK_FULL, NOT_WRITABLE, cache_write_message, check_folder
from .hub_layout import layout_error, load_combined, preprocess_config, read_json
from .scratch import leftovers, scratch_dir
from .tokenizer import EOT_ID, SOT_ID

VOCAB = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"


def _import_onnx():
    try:
        import onnx
        import onnx.utils
    except ImportError as exc:
        raise BackendUnavailableError(
            "building a bundle from a prebuilt ONNX model needs the onnx package: "
            "pip install 'edgeclip[onnx]'"
        ) from exc
    return onnx


def graph_inputs_needed(graph, outputs: list[str]) -> list[str]:
    """Graph inputs that ``outputs`` depend on (walking node inputs backwards)."""
    producer = {out: node for node in graph.node for out in node.output}
    declared = [i.name for i in graph.input]
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None:
            stack.extend(n for n in node.input if n)
            # names read by subgraphs (If/Loop bodies) from the outer scope
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else []:
                    for sub_node in sub.node:
                        stack.extend(n for n in sub_node.input if n)
    return [name for name in declared if name in seen]


def _scalar(tensor) -> float | None:
    from onnx import numpy_helper

    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _logit_scale_from_names(model) -> float | None:
    for init in model.graph.initializer:
        if "logit_scale" in init.name.lower() and (v := _scalar(init)) is not None:
            return v
    for node in model.graph.node:
        if node.op_type == "Constant" and any("logit_scale" in o.lower() for o in node.output):
            for attr in node.attribute:
                if attr.name == "value" and (v := _scalar(attr.t)) is not None:
                    return v
    return None


def _logit_scale_measured(model_path: Path, image_size: int, context_length: int) -> float | None:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        ids = np.zeros((1, context_length), dtype=np.int64)
        ids[0, :3] = [SOT_ID, 320, EOT_ID]
        feeds = {
            "input_ids": ids,
            "pixel_values": np.random.default_rng(0)
            .standard_normal((1, 3, image_size, image_size))
            .astype(np.float32),
            "attention_mask": (ids != 0).astype(np.int64),
        }
        names = [i.name for i in sess.get_inputs()]
        out = dict(
            zip(
                [o.name for o in sess.get_outputs()],
                sess.run(None, {k: v for k, v in feeds.items() if k in names}),
            )
        )
        img, txt = out["image_embeds"][0], out["text_embeds"][0]
        cos = float(img @ txt / (np.linalg.norm(img) * np.linalg.norm(txt)))
        if abs(cos) < 1e-6:
            return None
        return float(out["logits_per_image"][0, 0]) / cos
    except Exception:  # best effort: any failure falls through to the config value
        return None


def read_logit_scale(model, model_path: Path, config: dict, arch: dict) -> tuple[float, str]:
    """The logit scale multiplier (clamped at 100) and where it came from (see module doc)."""
    raw = _logit_scale_from_names(model)
    if raw is not None:
        return min(math.exp(raw), 100.0), "graph initializer logit_scale (exp'd)"
    measured = _logit_scale_measured(model_path, arch["image_size"], arch["context_length"])
    if measured is not None:
        return min(measured, 100.0), "measured: logits_per_image / cosine on the combined graph"
    init = float(config.get("logit_scale_init_value", math.log(1 / 0.07)))
    return min(math.exp(init), 100.0), "config.json logit_scale_init_value (initial value)"


def architecture_from_config(config: dict, fallback: dict) -> dict[str, Any]:
    """The bundle's architecture block: the repo's config.json where it says, else the zoo's."""
    from .zoo import ARCH_KEYS

    arch = {k: fallback.get(k) for k in ARCH_KEYS}
    vc, tc = config.get("vision_config") or {}, config.get("text_config") or {}
    pairs = {
        "embed_dim": config.get("projection_dim"),
        "image_size": vc.get("image_size"),
        "patch_size": vc.get("patch_size"),
        "vision_width": vc.get("hidden_size"),
        "vision_layers": vc.get("num_hidden_layers"),
        "vision_heads": vc.get("num_attention_heads"),
        "text_width": tc.get("hidden_size"),
        "text_layers": tc.get("num_hidden_layers"),
        "text_heads": tc.get("num_attention_heads"),
        "context_length": tc.get("max_position_embeddings"),
        "vocab_size": tc.get("vocab_size"),
        "hidden_act": tc.get("hidden_act") or vc.get("hidden_act"),
    }
    arch.update({k: v for k, v in pairs.items() if v is not None})
    arch["image_size"] = arch["image_size"] or 224
    arch["context_length"] = arch["context_length"] or 77
    return arch


def _split(onnx, model, model_path: Path, out_dir: Path) -> dict[str, list[str]]:
    """Write image.onnx and text.onnx into ``out_dir``; return the inputs each tower kept.

    This is ``onnx.utils.extract_model`` on a model loaded once (the function itself would load
    the whole combined model again for each tower).
    """
    outputs = {o.name for o in model.graph.output}
    for need in ("image_embeds", "text_embeds"):
        if need not in outputs:
            raise InputError(
                f"{model_path} has no output {need!r} (outputs: {sorted(outputs)}); a hub-onnx "
                "source must be a combined transformers CLIPModel export."
            )
    extractor = onnx.utils.Extractor(model)
    inputs = {}
    for tower, output in (("image", "image_embeds"), ("text", "text_embeds")):
        needed = graph_inputs_needed(model.graph, [output])
        inputs[tower] = needed
        sub = extractor.extract_model(needed, [output])
        path = out_dir / f"{tower}.onnx"
        if sub.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF:
            onnx.save(sub, str(path), save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save(sub, str(path))
        onnx.checker.check_model(str(path))
    return inputs


def default_cache_root() -> Path:
    """Where built bundles go (see ``edgeclip.paths.bundles_dir``)."""
    from .paths import bundles_dir

    return bundles_dir()


def _write_towers(onnx: Any, model_name: str, entry: dict, source: dict, roles: dict,
                  paths: dict, config: dict, preprocess: dict, tmp: Path) -> dict[str, Any]:  # fmt: skip
    """Split the combined graph into ``tmp/onnx-fp32``, copy the vocab; return the manifest."""
    model_path = paths[roles["model"]]
    model = load_combined(onnx, model_name, source, roles, paths)
    inputs = _split(onnx, model, model_path, tmp / "onnx-fp32")
    fallback = dict(entry.get("architecture") or {})
    fallback["image_size"] = fallback.get("image_size") or preprocess["image_size"]
    arch = architecture_from_config(config, fallback)
    if arch["image_size"] != preprocess["image_size"]:  # else a bundle no load would accept
        why = (f"has vision_config.image_size {arch['image_size']} but the preprocessor crops to "
               f"{preprocess['image_size']}")  # fmt: skip
        raise layout_error(model_name, source, roles.get("config", "config.json"), why)
    scale, scale_source = read_logit_scale(model, model_path, config, arch)
    del model  # the probe set below runs the towers: not both in memory
    shutil.copyfile(VOCAB, tmp / "tokenizer" / VOCAB.name)
    return {
        "name": model_name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "edgeclip_version": _edgeclip_version(),
        "source": {
            "kind": "hub-onnx",
            "path": str(model_path),
            "repo": source["repo"],
            "revision": source.get("revision"),
            "file": roles["model"],
            "logit_scale_from": scale_source,
        },
        "architecture": arch,
        "logit_scale": scale,
        "tokenizer": {
            "kind": "clip-bpe",
            "file": f"tokenizer/{VOCAB.name}",
            "context_length": int(arch.get("context_length") or 77),
        },
        "preprocess": preprocess,
        "variants": [
            {
                "id": "onnx-fp32",
                "backend": "onnx",
                "precision": "fp32",
                "image": {"file": "onnx-fp32/image.onnx", "input": "pixel_values", "output": "image_embeds",
                          "batch_sizes": None, "inputs": inputs["image"]},
                "text": {"file": "onnx-fp32/text.onnx", "input": "input_ids", "output": "text_embeds",
                         "batch_sizes": None, "inputs": inputs["text"]},
                # Nothing to compare a prebuilt export with here: it *is* the reference, and
                # no gate verdict is written for it. Variants derived from it are gated
                # against it, on each device, through the probe set below.
                "parity": {},
                "gate": {"reason": "the prebuilt export is this bundle's reference"},
                "options": {"role": "reference"},
            }
        ],
    }  # fmt: skip


def bundle_from_hub_onnx(
    model_name: str,
    entry: dict[str, Any],
    source: dict[str, Any],
    cache_root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Fetch a ``hub-onnx`` source, split its combined graph into towers, write a bundle.

    The bundle lands in ``cache_root/<model_name>@<revision>/`` (built in a temporary folder
    beside it, then renamed, so a crash never leaves half a bundle). An existing bundle there is
    returned as is, without any request (so it also works offline); with an unpinned revision
    ("main") that means it is not refreshed: delete the folder to rebuild it. ``cache_dir`` is the HF hub cache for the download (default: HF's own).
    """
    revision = source.get("revision") or "main"
    root = Path(cache_root).expanduser()
    final = root / f"{model_name}@{revision}"
    if (final / "manifest.json").is_file():
        return final
    by_home = os.environ.get("EDGECLIP_HOME") and not os.environ.get("EDGECLIP_CACHE")
    check_folder(root, "EDGECLIP_HOME" if by_home else "EDGECLIP_CACHE")
    # No manifest: a half-deleted or damaged leftover (a build appears whole, by a rename that
    # fails onto a leftover, hence this order of checks), so it goes.
    if os.path.lexists(final) and not (final / "manifest.json").is_file():
        discard_bundle(final)
    roles = {f.get("role"): f["path"] for f in source["files"] if isinstance(f, dict)}
    if "model" not in roles:
        raise InputError(
            f"zoo entry {model_name!r}: hub-onnx source lists no file with role 'model'."
        )
    onnx = _import_onnx()
    paths = fetch_files(
        source["repo"],
        source.get("revision"),
        source["files"],
        cache_dir=cache_dir,
        model_name=model_name,
    )
    config = read_json(model_name, source, roles, paths, "config")
    pp = read_json(model_name, source, roles, paths, "preprocessor")
    preprocess = preprocess_config(model_name, source, roles, pp)  # before the long part
    try:
        _build(onnx, model_name, entry, source, roles, paths, config, preprocess, root, final)
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE | DISK_FULL:
            raise
        raise EdgeclipError(
            cache_write_message(model_name, f"the bundle {final.name}", root, exc.errno, exc)
        ) from exc
    return final


def discard_bundle(path: Path) -> None:
    """Delete a damaged bundle folder edgeclip built, so it can be built again: renamed aside
    first, so no build racing this one sees it half deleted; one already gone is fine."""
    aside = None
    try:
        aside = scratch_dir(path.parent, path.name, "damaged")
        os.replace(path, aside / "old")
    except FileNotFoundError:
        pass  # another process discarded it first
    except OSError as exc:  # a read-only bundle folder, too
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise EdgeclipError(
            f"{path} is damaged and could not be moved aside to rebuild it ({exc}): delete it "
            "and load the model again (it is rebuilt from the downloaded files)."
        ) from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _sweep_leftovers(root: Path, name: str) -> None:
    """Delete the folders a killed build (or discard) of ``name`` left in ``root``: nothing
    else ever would. Another process's build in progress is left alone."""
    for kind in ("partial", "damaged"):
        for leftover in leftovers(root, name, kind):
            shutil.rmtree(leftover, ignore_errors=True)


def _build(onnx: Any, model_name: str, entry: dict, source: dict, roles: dict, paths: dict,
           config: dict, preprocess: dict, root: Path, final: Path) -> None:  # fmt: skip
    """Write the bundle in a temporary folder beside ``final``, then rename it into place."""
    root.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(root, final.name)
    tmp = scratch_dir(root, final.name, "partial")
    try:
        (tmp / "onnx-fp32").mkdir()
        (tmp / "tokenizer").mkdir()
        manifest = _write_towers(onnx, model_name, entry, source, roles, paths, config,
                                 preprocess, tmp)  # fmt: skip
        from .bundle import write_manifest
        from .probeset import reference_probe

        manifest["probe"] = reference_probe(tmp, manifest, "onnx-fp32 (prebuilt)")
        write_manifest(tmp, manifest)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # lost a race only if the winner finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _edgeclip_version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except ImportError:
        return "unknown"


__all__ = [
    "bundle_from_hub_onnx",
    "discard_bundle",
    "default_cache_root",
    "graph_inputs_needed",
]
