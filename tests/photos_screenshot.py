"""Write the docs screenshot of the photo search page (``/photos``):

    python tests/photos_screenshot.py docs/serve-photos.png

It trains (or reuses, from EDGECLIP_HOME/test-models) the small CLIP of ``benchmarks/index_model.py``
on procedural coloured shapes, indexes 96 such photos with ``edgeclip index``, starts
``edgeclip serve MODEL --index DB``, types a query on the page in headless Chromium and captures
it. No real TinyCLIP weights can be reached from the build machines, so the photos are shapes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from test_serve_helpers import Chromium, ServeProcess  # noqa: E402

QUERY = "a photo of a red circle"
WINDOW = (1000, 760)


def _photos(root: Path) -> None:
    from PIL import Image

    from converters.calibration import synthetic_pairs

    images, _, _ = synthetic_pairs(96, 96, seed=11)
    for i, im in enumerate(images):
        folder = root / ("2024" if i % 2 else "2023")
        folder.mkdir(parents=True, exist_ok=True)
        im.resize((320, 240), Image.Resampling.BICUBIC).save(folder / f"IMG_{i:04d}.jpg", quality=90)


def _shrink(png: Path) -> None:
    """256 colours: a third of the bytes in the repository, no visible change for a UI."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.index_model import cached_bundle
    from benchmarks.search_quality import STEPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    bundle = cached_bundle(STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _photos(tmp / "Pictures")
        db = tmp / "photos.db"
        subprocess.run([sys.executable, "-m", "edgeclip", "index", str(tmp / "Pictures"), "--db",
                        str(db), "--model", str(bundle), "--quiet"], check=True)  # fmt: skip
        with ServeProcess(bundle, "--index", str(db), log_dir=tmp) as server:
            browser = Chromium(tmp / "profile", window=WINDOW)
            try:
                browser.open(server.url + "/photos")
                browser.wait_until("document.getElementById('model').textContent !== 'connecting...'")
                browser.evaluate(f"document.getElementById('q').value = {json.dumps(QUERY)}")
                browser.evaluate("document.getElementById('k').value = '12'")
                browser.evaluate("document.getElementById('search').requestSubmit()")
                browser.wait_until("document.body.dataset.state === 'done'")
                browser.wait_until("[...document.querySelectorAll('#results img')].every("
                                   "i => i.complete && i.naturalWidth > 0)")  # fmt: skip
                shown = browser.evaluate("[...document.querySelectorAll('#results .photo')]"
                                         ".map(f => f.dataset.path.split('/').pop()).join(' ')")  # fmt: skip
                browser.screenshot(args.out)
            finally:
                browser.close()
    _shrink(args.out)
    print(f"wrote {args.out}: {QUERY!r} -> {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
