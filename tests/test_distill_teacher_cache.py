"""A damaged on-disk teacher cache is recomputed with a warning and rewritten, not a traceback."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from edgeclip.distill.trainer import TrainConfig, train  # noqa: E402


def _cfg(out, teacher, cache):
    return TrainConfig(student="micro", out=str(out), teacher=str(teacher), losses="fd=2000,icl=1,crd=1", steps=2,
                       batch_size=8, procedural_size=16, eval_held_out=1, eval_seen=1, progress=False,
                       teacher_cache_dir=str(cache))  # fmt: skip


def _losses(out):
    return [json.loads(x)["loss"] for x in open(out / "train_log.jsonl")]


@pytest.mark.parametrize("damage", ["truncated", "not a store"])
def test_a_damaged_teacher_cache_is_computed_again_and_rewritten(tmp_path, teacher_dir, damage):
    cache = tmp_path / "cache"
    assert train(_cfg(tmp_path / "a", teacher_dir, cache))["teacher_items_computed"] == 16
    (f,) = cache.glob("*.pt")
    if damage == "truncated":  # a copy cut short (a full disk, a killed copy)
        f.write_bytes(f.read_bytes()[:300])
    else:
        torch.save({"img": torch.zeros(3)}, f)
    # before: torch's 'PytorchStreamReader failed reading zip archive' traceback (or a KeyError)
    with pytest.warns(RuntimeWarning, match=r"teacher cache file .* is not usable .* computed again"):
        again = train(_cfg(tmp_path / "b", teacher_dir, cache))
    assert again["teacher_items_computed"] == 16 and _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert train(_cfg(tmp_path / "c", teacher_dir, cache))["teacher_items_computed"] == 0  # rewritten


SAVER = """
import sys, torch
from pathlib import Path
from edgeclip.distill.teacher_cache import TeacherFeatures
f = TeacherFeatures.__new__(TeacherFeatures)  # a store as a run leaves it, without its teacher
f.disk, f.computed = Path(sys.argv[1]), 1
f.store = {k: torch.zeros(8000, 256, dtype=torch.float16) for k in ("img", "txt")}
f.store["have"] = torch.ones(8000, dtype=torch.bool)
for _ in range(20):
    f.save()
"""


def test_two_runs_saving_one_cache_file_at_once_both_finish(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "cache" / "store.pt"
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    errs = [p.communicate(timeout=120)[1] for p in procs]
    # before: both wrote store.tmp; one's rename took it, the other's failed (FileNotFoundError)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert torch.load(path, weights_only=True)["have"].all() and [p.name for p in path.parent.iterdir()] == ["store.pt"]
