"""Write a trained model as a Hugging Face CLIPModel directory the converters take unchanged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..bpe_merges import hf_vocab_and_merges
from .evaluate import MEAN, STD
from .students import EOT, SOT, arch_of, quiet_transformers

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def write_tokenizer_files(out: Path, context_length: int) -> None:
    """edgeclip's BPE vocab plus the equivalent HF ``vocab.json``/``merges.txt``/tokenizer config."""
    from edgeclip.tokenizer import default_vocab_path

    src = Path(default_vocab_path())
    shutil.copyfile(src, out / VOCAB_FILE)
    vocab, merges = hf_vocab_and_merges(src)
    assert len(vocab) == EOT + 1 and vocab["<|startoftext|>"] == SOT
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok_cfg = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        # HF pads with EOT; the model pools at the first EOT, so zero or EOT padding agree.
        "pad_token": "<|endoftext|>", "do_lower_case": True,
    }  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    special = {k: tok_cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def preprocessor_config(size: int) -> dict:
    """The exported ``preprocessor_config.json``: CLIP's resize, centre crop and normalisation."""
    return {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(MEAN), "image_std": list(STD), "do_convert_rgb": True,
    }  # fmt: skip


def save_clip_dir(model, out: str | Path, extra: dict | None = None) -> Path:
    """Save ``model`` (a transformers CLIPModel) with preprocessor and tokenizer files.

    ``extra`` is written as ``edgeclip_distill.json`` (training provenance and metrics). Files
    are written into ``OUT/.export-partial`` and moved into ``OUT`` one by one (atomic renames),
    ``config.json`` last: an interrupted export never looks like a complete CLIPModel folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".export-partial"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    (out / "config.json").unlink(missing_ok=True)  # a folder being rewritten is not complete
    with quiet_transformers():
        model.save_pretrained(str(stage), safe_serialization=True)
    arch = arch_of(model)
    pre = preprocessor_config(arch["image_size"])
    (stage / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    write_tokenizer_files(stage, arch["context_length"])
    if extra is not None:
        (stage / "edgeclip_distill.json").write_text(
            json.dumps({"architecture": arch, **extra}, indent=2)
        )
    names = sorted(p.name for p in stage.iterdir())
    for name in [n for n in names if n != "config.json"] + ["config.json"]:
        os.replace(stage / name, out / name)
    stage.rmdir()
    return out
