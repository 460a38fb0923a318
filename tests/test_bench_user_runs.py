"""``edgeclip bench`` as a user runs it: damaged variants, a bundle's own torch variant, a rerun
into the same ``-o``, and ``--merge`` given files it cannot use. Real bundles, real sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cli

# the cheapest real run: one batch size, no memory children, no JPEG pass, no torch
FAST = ["--quick", "--threads", "1", "--no-memory", "--no-e2e", "--no-gpu"]


@pytest.fixture(scope="module")
def two_variant_bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    """The micro bundle plus a gated ``onnx-int8-dynamic`` and a ``torch-fp32`` (torch.export)."""
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("bench-user") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="onnx,torch", precisions="int8-dynamic,fp32",
                 n_calib=8, n_eval=16, keep_failed=True, log=lambda _: None)  # fmt: skip
    return bundle


def _damaged_copy(bundle, tmp_path):
    copy_ = tmp_path / "damaged"
    shutil.copytree(bundle, copy_)
    graph = copy_ / "onnx-int8-dynamic" / "image.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes: a bad download
    graph.write_bytes(bytes(data))
    return copy_


def test_a_damaged_variant_is_named_not_silently_dropped(two_variant_bundle, tmp_path, capsys):
    bundle = _damaged_copy(two_variant_bundle, tmp_path)
    out = tmp_path / "o"
    argv = [str(bundle), *FAST, "--batch-sizes", "1", "--baseline", "none", "--backends", "onnx"]
    assert cli.main([*argv, "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in res["throughput"]} == {"onnx-fp32"}
    note = ("skipped onnx-int8-dynamic: its files are damaged (onnx-int8-dynamic/image.onnx: "
            "sha256 differs from the manifest); re-download or re-convert the bundle")  # fmt: skip
    assert note in res["notes"]
    assert "note: " + note in capsys.readouterr().out
    assert note in (out / "results.md").read_text()
    # asked for by precision, the only match being the damaged one: said so, not "has no int8"
    assert cli.main([*argv, "--precisions", "int8", "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "has no int8 variant" in err and "Left out, its files damaged: onnx-int8-dynamic" in err
    assert not (tmp_path / "o2").exists()


def test_the_bundles_torch_variant_and_the_torch_baseline_are_two_rows(
    two_variant_bundle, micro_hf_checkpoint, tmp_path
):
    out = tmp_path / "o"
    argv = [str(two_variant_bundle), *FAST, "--batch-sizes", "1", "--backends", "onnx,torch",
            "--precisions", "fp32", "--checkpoint", str(micro_hf_checkpoint), "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    ids = [r["variant"] for r in res["throughput"]]
    assert sorted(ids) == ["onnx-fp32", "torch-eager-fp32", "torch-fp32"]  # each label once
    assert res["baseline"] == "torch-eager-fp32"
    rows = {r["variant"]: r for r in res["throughput"]}
    assert rows["torch-eager-fp32"]["vs_baseline"] == pytest.approx(1.0)
    assert rows["torch-fp32"]["vs_baseline"] == pytest.approx(
        rows["torch-fp32"]["pairs_per_s"] / rows["torch-eager-fp32"]["pairs_per_s"]
    )
    assert "| × torch-eager-fp32 |" in (out / "results.md").read_text()


def test_a_rerun_leaves_no_plot_of_the_earlier_run(micro_bundle, tmp_path, capsys):
    out = tmp_path / "o"
    base = [str(micro_bundle), *FAST, "--baseline", "none", "-o", str(out)]
    assert cli.main([*base, "--batch-sizes", "1"]) == 0
    assert (out / "latency.png").is_file()  # batch 1 was timed: a latency plot
    assert cli.main([*base, "--batch-sizes", "2"]) == 0  # no batch 1: no latency rows
    stdout = capsys.readouterr().out
    assert not (out / "latency.png").exists(), "the first run's latency.png outlived it"
    assert "latency.png" not in stdout.splitlines()[-1]  # the "wrote ..." line
    res = json.loads((out / "results.json").read_text())
    assert [r["batch_size"] for r in res["throughput"]] == [2]
    assert sorted(p.name for p in out.iterdir()) == [
        "pairs_per_s.png", "results.csv", "results.json", "results.md"]  # fmt: skip


def _bench(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent.parent)  # fmt: skip


def test_merge_refuses_what_it_cannot_use_in_one_line(micro_bundle, tmp_path):
    good = tmp_path / "run"
    assert cli.main([str(micro_bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "-o", str(good)]) == 0  # fmt: skip
    (tmp_path / "list.json").write_text("[1, 2]\n")
    (tmp_path / "row.json").write_text(json.dumps(
        {"schema": "edgeclip-bench/1", "throughput": [{"variant": "onnx-fp32"}]}))  # fmt: skip
    blocked = tmp_path / "blocked"
    (blocked / "comparison.md").mkdir(parents=True)
    cases = [
        (["--merge", str(tmp_path / "list.json")], "(a JSON list, not an object)"),
        (["--merge", str(tmp_path / "row.json")], "throughput row 1 has no batch_size, pairs_per_s"),
        (["--merge", str(good), "-o", str(blocked)], f"{blocked / 'comparison.md'} is a folder"),
        ([str(micro_bundle), "--quick", "--merge", str(good)], "so MODEL, --quick would do nothing"),
    ]
    for argv, message in cases:
        if "-o" not in argv:
            argv = [*argv, "-o", str(tmp_path / "cmp")]
        done = _bench(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (argv, done.stderr)
    assert not (tmp_path / "cmp").exists() and list(blocked.iterdir()) == [blocked / "comparison.md"]
    done = _bench("--merge", str(good), "-o", str(tmp_path / "cmp"))  # the good one still merges
    assert done.returncode == 0 and "threads 1," in done.stdout, done.stderr


def test_a_checkpoint_of_another_model_is_refused_before_the_timing(
    micro_bundle, odd_hf_checkpoint, tmp_path, capsys
):
    out = tmp_path / "o"
    argv = [str(micro_bundle), *FAST, "--batch-sizes", "1", "--checkpoint", str(odd_hf_checkpoint)]
    assert cli.main([*argv, "-o", str(out)]) == 2  # not a torch traceback after the timing
    err = capsys.readouterr().err
    assert f"--checkpoint {odd_hf_checkpoint} is not the model of bundle {micro_bundle}:" in err
    assert "--baseline none" in err and not out.exists()


def test_the_roofline_counts_the_text_length_each_tower_runs():
    from benchmarks.roofline import pair_macs_at, text_tokens
    from edgeclip.bundle import Tower
    from edgeclip.timing import sample_inputs

    _, ids = sample_inputs(8, 32)  # "a photo of a cat." ... "a photo of a mountain lake at dawn."
    tower = {"file": "t.onnx", "input": "input_ids", "output": "text_embeds", "batch_sizes": None}
    cut, buckets = Tower.from_dict({**tower, "dynamic_sequence": True}), Tower.from_dict(
        {**tower, "sequence_lengths": [16, 77]})  # fmt: skip
    assert text_tokens(cut, ids, 1) == 8 and text_tokens(cut, ids, 8) == 11  # after the end token
    assert text_tokens(None, ids, 8) == 11  # torch, padding="longest"
    assert text_tokens(buckets, ids, 8) == 16 and text_tokens(Tower.from_dict(tower), ids, 8) == 77
    from benchmarks.macs import analytic_macs

    arch = {"image_size": 32, "patch_size": 8, "vision_width": 64, "vision_layers": 2,
            "text_width": 64, "text_layers": 2, "embed_dim": 32, "context_length": 77}  # fmt: skip
    full = analytic_macs(arch)
    assert pair_macs_at(full, arch, 77) == full["pair_macs"] == pair_macs_at(full, arch, None)
    assert pair_macs_at(full, arch, 11) == analytic_macs({**arch, "context_length": 11})["pair_macs"]


def test_quick_end_to_end_is_shown_beside_a_measured_model_rate(micro_bundle, tmp_path):
    out = tmp_path / "o"
    argv = [str(micro_bundle), "--quick", "--threads", "1", "--no-memory", "--no-gpu",
            "--baseline", "none", "--batch-sizes", "1,12", "-o", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    (row,) = res["e2e"]
    timed = {r["batch_size"]: r["images_per_s"] for r in res["throughput"]}
    assert row["batch_size"] == 12 and row["n_images"] >= 12  # was batch 8: no model rate to show
    assert row["model_images_per_s"] == timed[12]


@pytest.mark.parametrize("flag", ["--backends", "--precisions"])
def test_a_filter_that_names_nothing_is_refused_not_taken_for_all(micro_bundle, tmp_path, capsys, flag):
    out = tmp_path / "o"
    assert cli.main([str(micro_bundle), *FAST, flag, ",", "-o", str(out)]) == 2  # was: all
    assert f"{flag} ',' names nothing" in capsys.readouterr().err and not out.exists()


def test_accuracy_folders_that_measure_nothing_are_refused_before_the_timing(micro_bundle, tmp_path, capsys):
    from PIL import Image

    one, unreadable = tmp_path / "one", tmp_path / "unreadable"
    (one / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(one / "cat" / "a.jpg")
    for name in ("cat", "dog"):
        (unreadable / name).mkdir(parents=True)
        (unreadable / name / "x.jpg").write_text("not a jpeg")
    for folder, message in ((one, "has one class folder (cat); zero-shot accuracy needs two"),
                            (unreadable, "none of the 2 files under accuracy folder")):  # fmt: skip
        out = tmp_path / f"o-{folder.name}"
        assert cli.main([str(micro_bundle), *FAST, "--baseline", "none", "--accuracy", str(folder),
                         "-o", str(out)]) == 2  # fmt: skip
        assert message in capsys.readouterr().err and not out.exists()


def _old_style_copy(bundle, tmp_path, keep):
    """``bundle`` as a bundle from before file tables (nothing to hold the graphs to), with the
    variants ``keep`` and the int8 image graph damaged: it passes Bundle.open, fails to load."""
    copy_ = tmp_path / "old-style"
    shutil.copytree(bundle, copy_)
    manifest = json.loads((copy_ / "manifest.json").read_text())
    manifest.pop("files")
    manifest["variants"] = [v for v in manifest["variants"] if v["id"] in keep]
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    graph = copy_ / "onnx-int8-dynamic" / "image.onnx"
    graph.write_bytes(b"\0" * 64 + graph.read_bytes()[64:])
    return copy_


def test_a_variant_that_does_not_open_is_skipped_with_a_note(two_variant_bundle, tmp_path, capsys):
    bundle = _old_style_copy(two_variant_bundle, tmp_path, ("onnx-fp32", "onnx-int8-dynamic"))
    out = tmp_path / "o"
    assert cli.main([str(bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "-o", str(out)]) == 0  # was: an onnxruntime traceback, nothing measured  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in res["throughput"]} == {"onnx-fp32"}
    (note,) = [n for n in res["notes"] if n.startswith("skipped onnx-int8-dynamic")]
    assert "its graphs do not open here (" in note and "edgeclip verify" in note
    capsys.readouterr()


def test_a_run_that_fails_before_any_row_keeps_the_earlier_results(two_variant_bundle, micro_bundle,
                                                                   tmp_path, capsys):  # fmt: skip
    out = tmp_path / "o"
    assert cli.main([str(micro_bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "-o", str(out)]) == 0  # fmt: skip
    before = (out / "results.json").read_text()
    bundle = _old_style_copy(two_variant_bundle, tmp_path, ("onnx-int8-dynamic",))
    assert cli.main([str(bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "-o", str(out)]) == 2  # fmt: skip
    assert "no variant of" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before  # not an empty run written over it


def test_merge_says_when_runs_measured_different_models_or_were_cut_short(micro_bundle, tmp_path):
    run = tmp_path / "run"
    assert cli.main([str(micro_bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "-o", str(run)]) == 0  # fmt: skip
    other = json.loads((run / "results.json").read_text())
    other.update(model={**other["model"], "name": "tinyclip-39m"}, interrupted=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(other))
    assert cli.main(["--merge", str(run), str(tmp_path / "other"), "-o", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "these runs measured different models (micro, tinyclip-39m)" in md
    assert md.count("(interrupted: partial results)") == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_threads_above_the_cores_this_process_may_use_is_refused(micro_bundle, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to pin the run to one")
    done = subprocess.run([sys.executable, "-m", "benchmarks.cli", str(micro_bundle), "--quick",
                           "--threads", "2", "-o", str(tmp_path / "o")],
                          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)  # fmt: skip
    assert done.returncode == 2, done.stderr  # was: 2 threads timed on 1 core, no word
    assert "--threads 2 is more than the 1 of this machine's" in done.stderr
    assert "may run on (its CPU affinity" in done.stderr and "pass 1," in done.stderr


def test_device_auto_rows_name_the_device_that_ran_them(micro_bundle, tmp_path):
    from benchmarks.variants import ran_on
    from edgeclip.backends import get_backend

    out = tmp_path / "o"
    assert cli.main([str(micro_bundle), *FAST, "--batch-sizes", "1", "--baseline", "none",
                     "--device", "auto", "-o", str(out)]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    session = get_backend("onnx").open(micro_bundle / "onnx-fp32" / "image.onnx", threads=1, device="auto")
    (row,) = res["throughput"]
    assert row["device"] == ran_on(session) != "auto"  # was "auto": no such device
    if row["device"] == "cpu":  # a CPU row is set against the CPU's GEMM peak (was left out)
        assert [r["variant"] for r in res["roofline"]["rows"]] == ["onnx-fp32"]


def _site_without_torch(tmp_path) -> Path:
    """A site-packages of links to this venv's packages but torch and transformers: a
    runtime-only install (pip install "edgeclip[onnx]"), for ``python -S`` to import from."""
    import site

    site_dir = tmp_path / "site-without-torch"
    site_dir.mkdir()
    for src in Path(site.getsitepackages()[0]).iterdir():
        top = src.name.split("-")[0].split(".")[0].lower()
        if top not in ("torch", "transformers", "functorch", "torchgen") and src.suffix != ".pth":
            (site_dir / src.name).symlink_to(src)
    return site_dir


def test_without_torch_the_baseline_is_skipped_or_refused_not_a_traceback(
    micro_bundle, micro_hf_checkpoint, tmp_path
):
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{_site_without_torch(tmp_path)}"}

    def bench(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", "-m", "benchmarks.cli", str(micro_bundle),
                               *FAST, "--batch-sizes", "1", *argv], capture_output=True,
                              text=True, timeout=120, cwd=root, env=env)  # fmt: skip

    probe = subprocess.run([sys.executable, "-S", "-c", "import onnxruntime, torch"], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "No module named 'torch'" in probe.stderr, probe.stderr  # the install is torch-free
    out = tmp_path / "o"
    done = bench("-o", str(out))  # the bundle's source checkpoint is here, torch is not
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "note: torch baseline skipped: torch is not installed here" in done.stdout
    res = json.loads((out / "results.json").read_text())
    assert res["baseline"] is None and [r["variant"] for r in res["throughput"]] == ["onnx-fp32"]
    done = bench("--checkpoint", str(micro_hf_checkpoint), "-o", str(tmp_path / "o2"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "the torch baseline needs torch, which is not installed here" in done.stderr


def test_a_class_map_that_names_no_folder_is_refused(micro_bundle, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "acc"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (40, 30), "blue").save(folder / name / "a.jpg")
    wnids = tmp_path / "wnids.json"  # keyed for another layout: every name fell back silently
    wnids.write_text(json.dumps({"n02123045": "tabby cat", "n02085620": "chihuahua"}))
    out = tmp_path / "o"
    assert cli.main([str(micro_bundle), *FAST, "--baseline", "none", "--accuracy", str(folder),
                     "--class-map", str(wnids), "-o", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "class map keys (n02085620, n02123045) name none of the class folders" in err
    assert f"of {folder} (cat, dog); key the map by folder name" in err and not out.exists()
