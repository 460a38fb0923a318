"""``python -m converters``: convert a checkpoint to a bundle, or write a random fixture checkpoint.

python -m converters convert CHECKPOINT -o BUNDLE [--backend onnx,openvino,litert]
    [--precision fp32,fp16,int8] [--calibration IMAGE_DIR [--captions FILE]] [--name N]
    [--config JSON] [--overwrite]
python -m converters fixture OUT_DIR [--arch tinyclip-8m|micro|odd] [--format hf|hf-bin|open_clip]
"""

from __future__ import annotations

import argparse
import json
import sys

from edgeclip.errors import EdgeclipError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also usable by ``edgeclip convert``)."""
    parser = argparse.ArgumentParser(
        prog="python -m converters",
        description="Convert a checkpoint to a bundle, or write a random fixture checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="checkpoint (HF dir or open_clip .pt + JSON) → bundle")
    conv.add_argument("checkpoint")
    conv.add_argument("-o", "--output", required=True, help="bundle directory to create")
    conv.add_argument("--name", default=None, help="model name in the manifest (default: dir name)")
    conv.add_argument(
        "--config", default=None, help="open_clip JSON config, if not beside the weights"
    )
    conv.add_argument("--backend", default="onnx",
                      help="comma list of onnx, openvino, litert, torch (default onnx)")  # fmt: skip
    conv.add_argument("--precision", default="fp32", help=(
        "comma list of fp32, fp16, int8, int8-dynamic, int8-static, int8-weights (default fp32; "
        "the onnx-fp32 reference is always built)"))  # fmt: skip
    conv.add_argument("--calibration", default=None,
                      help="folder of images for INT8 calibration and the gate (default: synthetic)")  # fmt: skip
    conv.add_argument("--captions", default=None,
                      help="with --calibration: text file, one caption a line (or NAME<TAB>caption)")  # fmt: skip
    conv.add_argument("--overwrite", action="store_true",
                      help="replace an existing bundle (never a folder that is not one)")  # fmt: skip
    conv.add_argument("--parity-images", type=int, default=8,
                      help="images of the export check against transformers (default 8)")  # fmt: skip
    conv.add_argument("--parity-texts", type=int, default=16,
                      help="captions of the export check against transformers (default 16)")  # fmt: skip
    fix = sub.add_parser(
        "fixture", help="write a randomly initialised CLIP checkpoint (random weights!)"
    )
    fix.add_argument("output", help="new or empty folder (existing checkpoints are not touched)")
    fix.add_argument("--arch", default="tinyclip-8m", choices=("tinyclip-8m", "micro", "odd"))
    fix.add_argument("--format", default="hf", choices=("hf", "hf-bin", "open_clip"))
    fix.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 on an edgeclip error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            _convert(args)
        else:
            _fixture(args)
    except EdgeclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: name the file, no traceback
        from .cli import os_error_line

        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _convert(args: argparse.Namespace) -> None:
    from edgeclip.bundle import Bundle

    from .bundle_writer import convert

    out = convert(
        args.checkpoint, args.output, name=args.name, config=args.config,
        overwrite=args.overwrite, backends=args.backend, precisions=args.precision,
        calibration_dir=args.calibration, captions=args.captions,
        n_parity_images=args.parity_images, n_parity_texts=args.parity_texts,
    )  # fmt: skip
    bundle = Bundle.open(out, verify=False)
    print(f"wrote {out}")
    print(json.dumps({k: v for k, v in bundle.variants[0].parity.items() if "cosine" in k}))
    for v in bundle.variants[1:]:
        print(f"  {v.id}: gate {'passed' if v.passed else 'FAILED'}")
    for rej in bundle.manifest.get("rejected_variants", []):
        print(f"  {rej['id']}: not shipped: {rej['reason']}")


def _fixture(args: argparse.Namespace) -> None:
    from pathlib import Path

    from edgeclip.errors import InputError

    from .fixtures import write_random_checkpoint

    out = Path(args.output)
    # Random weights written over a real checkpoint would be a silent, costly mistake.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(
            f"{out} exists and is not an empty folder; a fixture goes into a new folder "
            "(it would overwrite a checkpoint there with random weights)."
        )
    path = write_random_checkpoint(out, args.arch, args.format, args.seed)
    print(f"wrote {path} (random weights: {args.arch}, {args.format}; not a trained model)")


if __name__ == "__main__":
    sys.exit(main())
