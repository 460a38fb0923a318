"""Build the bundles the runtime-only test run uses (CI step 2 has no torch to convert with).

    python scripts/build_test_bundles.py OUT_DIR

Writes ``OUT_DIR/micro`` (random micro CLIP: onnx fp32 + int8-dynamic, failures kept and marked,
probe set included). The runtime-only tests find it through ``EDGECLIP_TEST_BUNDLES``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from converters.bundle_writer import convert
    from converters.fixtures import write_random_checkpoint

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        ckpt = write_random_checkpoint(Path(work) / "micro", arch="micro", fmt="hf", seed=0)
        convert(ckpt, out / "micro", name="micro", precisions="fp32,int8-dynamic",
                keep_failed=True, overwrite=True, progress=False, log=lambda _: None)  # fmt: skip
    print(f"wrote {out / 'micro'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
