"""Zero-shot classification of a few images, with prompt ensembling.

    python examples/classify.py --model tinyclip-8m IMAGE [IMAGE ...] --labels cat dog car

Any image that cannot be read is reported; the others are still classified.
"""

from __future__ import annotations

import argparse

import edgeclip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("images", nargs="+")
    ap.add_argument("--labels", nargs="+", required=True)
    ap.add_argument("--model", default="tinyclip-8m", help="zoo name, bundle dir or checkpoint dir")
    ap.add_argument("--templates", default="imagenet7", help="none, photo, imagenet7, imagenet80")
    args = ap.parse_args()

    model = edgeclip.load(args.model)
    print(model)
    try:
        results = model.classify(args.images, args.labels, top_k=3, templates=args.templates)
    except edgeclip.BatchError as err:
        print(err)
        results = err.results
    for path, top in zip(args.images, results):
        if top is not None:
            print(f"{path}: " + ", ".join(f"{label} {p:.1%}" for label, p in top))


if __name__ == "__main__":
    main()
