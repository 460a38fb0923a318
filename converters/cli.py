"""``edgeclip convert``: checkpoint (or zoo name) → bundle with the requested backend × precision variants."""

from __future__ import annotations

import argparse
from pathlib import Path


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local checkpoint path as is; a zoo name → its checkpoint files, fetched into the HF cache."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    from edgeclip.hub import fetch_files
    from edgeclip.loader import zoo_info
    from edgeclip.zoo import find_source

    info = zoo_info(name_or_path)
    source = find_source(info, "hf-checkpoint")
    if source is None:
        from edgeclip.errors import ModelNotFoundError

        raise ModelNotFoundError(f"zoo model {info['name']!r} lists no checkpoint to convert.")
    paths = fetch_files(
        source["repo"], source.get("revision"), source["files"], model_name=info["name"]
    )
    return next(iter(paths.values())).parent


def os_error_line(exc: OSError) -> str:
    """``FILE: reason`` (just the reason when the error names no file)."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def run_convert(args: argparse.Namespace) -> int:
    """Convert in one pass: the onnx-fp32 reference plus every requested variant, gated."""
    from edgeclip.bundle import Bundle
    from edgeclip.errors import InputError

    from .bundle_writer import convert
    from .calibration import check_calibration_args
    from .int8_pins import parse_int8_configs
    from .output_dir import check_output
    from .variants import check_requested

    # Checked before a zoo name is resolved: a typo costs no download.
    check_requested(args.backend, args.precision)
    parse_int8_configs(args.int8_config)
    check_calibration_args(args.calibration, args.captions)
    check_output(args.output, args.overwrite)
    try:
        out = convert(
            resolve_checkpoint(args.checkpoint), args.output, name=args.name, config=args.config,
            overwrite=args.overwrite, backends=args.backend, precisions=args.precision,
            calibration_dir=args.calibration, captions=args.captions, log=print,
            int8_configs=args.int8_config, int8_fallback=args.int8_fallback,
        )  # fmt: skip
    except OSError as exc:  # `edgeclip` prints an EdgeclipError as one line, exit 2
        raise InputError(os_error_line(exc)) from exc
    bundle = Bundle.open(out)
    print(f"wrote {out}")
    for v in bundle.variants:
        par = v.parity
        print(
            f"  {v.id:<22} image cos {par.get('image_cosine_mean', float('nan')):.5f}  "
            f"text cos {par.get('text_cosine_mean', float('nan')):.5f}  "
            f"gate {'passed' if v.passed else 'FAILED'} on {v.gate.get('isa', '?')}"
        )
    for rej in bundle.manifest.get("rejected_variants", []):
        print(f"  {rej['id']:<22} not shipped: {rej['reason']}")
    return 0
