"""``python -m converters``: convert a checkpoint to a bundle, or write a random fixture checkpoint.

python -m converters convert CHECKPOINT -o BUNDLE [--name N] [--config JSON] [--overwrite]
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
        prog="python -m converters", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="checkpoint (HF dir or open_clip .pt + JSON) → bundle")
    conv.add_argument("checkpoint")
    conv.add_argument("-o", "--output", required=True, help="bundle directory to create")
    conv.add_argument("--name", default=None, help="model name in the manifest (default: dir name)")
    conv.add_argument(
        "--config", default=None, help="open_clip JSON config, if not beside the weights"
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    conv.add_argument("--parity-images", type=int, default=8)
    conv.add_argument("--parity-texts", type=int, default=16)
    fix = sub.add_parser(
        "fixture", help="write a randomly initialised CLIP checkpoint (random weights!)"
    )
    fix.add_argument("output")
    fix.add_argument("--arch", default="tinyclip-8m", choices=("tinyclip-8m", "micro", "odd"))
    fix.add_argument("--format", default="hf", choices=("hf", "hf-bin", "open_clip"))
    fix.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 on an edgeclip error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            from .bundle_writer import convert

            out = convert(
                args.checkpoint,
                args.output,
                name=args.name,
                config=args.config,
                overwrite=args.overwrite,
                n_parity_images=args.parity_images,
                n_parity_texts=args.parity_texts,
            )
            from edgeclip.bundle import Bundle

            parity = Bundle.open(out, verify=False).variants[0].parity
            print(f"wrote {out}")
            print(json.dumps({k: v for k, v in parity.items() if "cosine" in k}))
        else:
            from .fixtures import write_random_checkpoint

            path = write_random_checkpoint(args.output, args.arch, args.format, args.seed)
            print(f"wrote {path} (random weights: {args.arch}, {args.format}; not a trained model)")
    except EdgeclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
