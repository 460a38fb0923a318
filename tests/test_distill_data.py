"""Procedural generator, CSV/TSV and WebDataset sources of the distillation stage."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from edgeclip.distill import procedural as P
from edgeclip.distill.datasets import CsvCaptions, IndexedStream, ShardStream, open_stream
from edgeclip.errors import InputError


def test_procedural_is_deterministic_by_seed():
    a = P.ProceduralCaptions(100, seed=3)
    b = P.ProceduralCaptions(100, seed=3)
    c = P.ProceduralCaptions(100, seed=4)
    xa, ca = a.batch([5, 17, 99])
    xb, cb = b.batch([5, 17, 99])
    xc, _ = c.batch([5, 17, 99])
    assert xa.shape == (3, 64, 64, 3) and xa.dtype == np.uint8
    assert np.array_equal(xa, xb) and ca == cb
    assert not np.array_equal(xa, xc)
    # order of access does not matter
    assert np.array_equal(a[17][0], xa[1])


def test_procedural_holds_out_pairs_and_varies_captions():
    d = P.ProceduralCaptions(1500, seed=0, max_count=3)
    held = set(P.HELD_OUT)
    templates, counts = set(), set()
    for i in range(1500):
        _, item = d.item(i)
        assert (item.colour, item.shape) not in held
        assert item.colour in item.caption or item.shape in item.caption
        templates.add(
            re.sub(
                r"\b(" + "|".join([*P.COLOURS, *P.SHAPES, *P.SIZES]) + r")\w*", "X", item.caption
            )
        )
        counts.add(item.count)
    assert counts == {1, 2, 3}
    assert len(templates) >= 12  # 9 full + partial + count templates, with positions/backgrounds
    assert not any(" a orange" in d[i][1] or d[i][1].startswith("a orange") for i in range(200))


def test_partial_captions_are_mostly_shape_only():
    d = P.ProceduralCaptions(4000, seed=2, partial_rate=0.4, shape_only_share=0.75)
    shape_only: set[str] = set()
    n_shape = n_colour = 0
    for i in range(4000):
        _, item = d.item(i)
        named_colour, named_shape = item.colour in item.caption, item.shape in item.caption
        n_shape += named_shape and not named_colour
        n_colour += named_colour and not named_shape
        if named_shape and not named_colour:
            shape_only.add(item.caption.replace(item.shape, "X"))
            assert item.colour == P.UNNAMED  # drawn in a colour no caption names
    # 0.4 x 0.75 = 30 % name only the shape, 0.4 x 0.25 = 10 % only the colour (4000 draws: ±3 sd)
    assert 0.30 * 4000 - 90 < n_shape < 0.30 * 4000 + 90
    assert 0.10 * 4000 - 60 < n_colour < 0.10 * 4000 + 60
    assert shape_only == {t.format(shape="X") for t in P.SHAPE_ONLY_TEMPLATES}


def test_procedural_data_version_keys_the_teacher_caches(monkeypatch):
    from edgeclip.distill.cli import procedural_teacher_dir
    from edgeclip.distill.teacher_cache import source_key

    before = procedural_teacher_dir(), source_key("procedural", 100, 0, 64, 20)
    csv_before = source_key("pairs.csv", 100, 0, 64, 20)
    monkeypatch.setattr(P, "DATA_VERSION", P.DATA_VERSION + 1)
    assert procedural_teacher_dir() != before[0]
    assert source_key("procedural", 100, 0, 64, 20) != before[1]
    assert source_key("pairs.csv", 100, 0, 64, 20) == csv_before  # a file source has no version


def test_procedural_objects_have_their_colour():
    d = P.ProceduralCaptions(50, seed=1)
    for i in range(20):
        img, item = d.item(i)
        want = np.asarray(P.OBJECT_RGB[item.colour], float)
        dist = np.abs(img.astype(float) - want).sum(-1)
        assert (dist < 60).sum() > 15, item  # a visible blob of the named colour


def test_eval_set_and_prompts():
    prompts, pairs = P.class_prompts()
    assert len(prompts) == 64 and prompts[0] == "a photo of a red circle"
    ev = P.eval_set(n_per_held_out=3, n_per_seen=1, image_size=32)
    assert ev["images"].shape == (10 * 3 + 54, 32, 32, 3)
    assert ev["held_out"].sum() == 30
    for lab, ho in zip(ev["label"], ev["held_out"]):
        assert (pairs[lab] in P.HELD_OUT) == ho
    again = P.eval_set(n_per_held_out=3, n_per_seen=1, image_size=32)
    assert np.array_equal(again["images"], ev["images"])


def test_bad_procedural_arguments():
    with pytest.raises(InputError, match="size must be > 0"):
        P.ProceduralCaptions(0)
    with pytest.raises(InputError, match="held out"):
        P.ProceduralCaptions(10, held_out=tuple((c, s) for c in P.COLOURS for s in P.SHAPES))


def test_streams_split_global_batches_across_processes():
    src = P.ProceduralCaptions(40, seed=0, image_size=32)
    one = IndexedStream(src, batch_size=8, seed=5)
    r0 = IndexedStream(src, batch_size=8, rank=0, world=2, seed=5)
    r1 = IndexedStream(src, batch_size=8, rank=1, world=2, seed=5)
    for _ in range(7):  # crosses an epoch boundary (40 items)
        x, c, i = one.next_batch()
        x0, c0, i0 = r0.next_batch()
        x1, c1, i1 = r1.next_batch()
        assert np.array_equal(np.concatenate([i0, i1]), i)
        assert c0 + c1 == c
        assert np.array_equal(np.concatenate([x0, x1]), x)
    with pytest.raises(InputError, match="divisible"):
        IndexedStream(src, batch_size=7, rank=0, world=2)


def _png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_csv_skips_missing_and_corrupt_images(tmp_path):
    (tmp_path / "img").mkdir()
    rows = ["image,caption"]
    for k in range(6):
        (tmp_path / "img" / f"{k}.png").write_bytes(_png((40 * k, 0, 0)))
        rows.append(f"img/{k}.png,red square {k}")
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    rows += ["img/missing.png,gone", "img/bad.png,corrupt"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    src = CsvCaptions(tmp_path / "pairs.csv", image_size=16)
    assert len(src) == 8
    stream = IndexedStream(src, batch_size=4, seed=0)
    seen = set()
    for _ in range(4):
        x, caps, idx = stream.next_batch()
        assert x.shape == (4, 16, 16, 3)
        seen.update(caps)
    assert seen == {f"red square {k}" for k in range(6)}
    assert stream.skipped == 2  # each bad file counted once, then remembered


def test_tsv_and_bad_csvs(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((0, 255, 0)))
    (tmp_path / "p.tsv").write_text("filepath\ttitle\na.png\ta green thing\n")
    x, cap = CsvCaptions(tmp_path / "p.tsv", 8)[0]
    assert cap == "a green thing" and x[0, 0].tolist() == [0, 255, 0]
    (tmp_path / "empty.csv").write_text("image,caption\n")
    with pytest.raises(InputError, match="no rows"):
        CsvCaptions(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="image column"):
        CsvCaptions(tmp_path / "cols.csv")
    with pytest.raises(InputError, match="does not exist"):
        open_stream(str(tmp_path / "nope.csv"), 4)
    (tmp_path / "allbad.csv").write_text("image,caption\nx.png,a\ny.png,b\n")
    with pytest.raises(InputError, match="no image .* could be read"):
        open_stream(str(tmp_path / "allbad.csv"), 2).next_batch()
    with pytest.raises(InputError, match="expected 'procedural'"):
        open_stream("data.parquet", 4)


def _write_shard(path, start, n, corrupt=()):
    with tarfile.open(path, "w") as tar:
        for k in range(start, start + n):
            img = b"garbage" if k in corrupt else _png((k * 10 % 255, 0, 0))
            for name, data in ((f"{k:06d}.jpg", img), (f"{k:06d}.txt", f"caption {k}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_stream_skip_and_split(tmp_path):
    _write_shard(tmp_path / "000000.tar", 0, 5, corrupt={2})
    _write_shard(tmp_path / "000001.tar", 5, 5)
    urls = str(tmp_path / "{000000..000001}.tar")
    s = open_stream(urls, batch_size=4, image_size=8)
    assert isinstance(s, ShardStream)
    caps = []
    for _ in range(2):
        x, c, _ = s.next_batch()
        assert x.shape == (4, 8, 8, 3)
        caps += c
    assert caps == [f"caption {k}" for k in (0, 1, 3, 4, 5, 6, 7, 8)]
    assert s.skipped == 1
    # two processes see the two halves of each global batch
    clean = tmp_path / "clean"
    clean.mkdir()
    _write_shard(clean / "000000.tar", 0, 8)
    u = str(clean / "000000.tar")
    one = ShardStream(u, 4, image_size=8).next_batch()[1]
    halves = [ShardStream(u, 4, rank=r, world=2, image_size=8).next_batch()[1] for r in (0, 1)]
    assert halves[0] + halves[1] == one
    # resume: a new stream with the saved state continues where the first stopped
    a = ShardStream(u, 4, image_size=8)
    a.next_batch()
    b = ShardStream(u, 4, image_size=8)
    b.load_state(a.state())
    assert b.next_batch()[1] == a.next_batch()[1]


def test_empty_shard_is_a_clear_error(tmp_path):
    with tarfile.open(tmp_path / "000000.tar", "w"):
        pass
    with pytest.raises(InputError, match="no samples"):
        open_stream(str(tmp_path / "000000.tar"), 2).next_batch()
