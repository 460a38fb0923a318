"""Text-to-image search over a folder with ``edgeclip.index``: index once, then query.

    python examples/image_search.py FOLDER "a red circle" [--model tinyclip-8m] [--top 5]

The index lives next to the folder (``FOLDER.edgeclip.db``). Later runs embed only new and
changed images, so a query on an unchanged folder costs one text embedding. The same from the
shell: ``edgeclip index FOLDER --db FOLDER.edgeclip.db`` then ``edgeclip search "..." --db ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeclip.index import Index


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("folder", type=Path)
    ap.add_argument("query")
    ap.add_argument("--model", default="tinyclip-8m")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()

    with Index(args.folder.with_suffix(".edgeclip.db"), args.model) as index:
        report = index.update([args.folder])
        print(report.summary())
        for path, reason in report.failures:
            print(f"  skipped {path}: {reason}")
        for hit in index.search(args.query, k=args.top):
            print(f"{hit.score:.3f}  {hit.path}")


if __name__ == "__main__":
    main()
