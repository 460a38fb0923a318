"""A bundle is self-contained: copied, renamed, read-only, tarred and untarred elsewhere it loads
and verifies; `verify --refresh` on a read-only bundle, and a manifest edited into the wrong
shape, give one clear error, not a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeclip.bundle import MANIFEST, Bundle, write_manifest
from edgeclip.errors import EdgeclipError

pytest.importorskip("torch")  # the micro fixture bundle is converted here


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLIP_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@contextmanager
def read_only(folder: Path):
    """``folder`` unwritable for this process; root ignores permission bits, so there it is
    made immutable (or, where the file system has no such flag, bind-mounted read-only)."""
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(p.stat().st_mode | 0o200)
        return
    flag = bool(shutil.which("chattr")) and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    if not flag:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
    try:
        yield
    finally:
        undo = ["chattr", "-i", str(folder)] if flag else ["umount", str(folder)]
        subprocess.run(undo, check=True)


def _verify_json(bundle: Path, home: Path) -> list[dict]:
    done = _cli("verify", str(bundle), "--json", home=home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["variants"]


def test_copied_renamed_tarred_read_only_bundle_loads_and_verifies(micro_bundle, tmp_path):
    copy = tmp_path / "renamed"
    shutil.copytree(micro_bundle, copy)
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        tar.add(copy, arcname="from-tar")
    (tmp_path / "elsewhere").mkdir()
    with tarfile.open(tmp_path / "b.tar") as tar:
        tar.extractall(tmp_path / "elsewhere", filter="data")
    untarred = tmp_path / "elsewhere" / "from-tar"
    original = _verify_json(micro_bundle, tmp_path / "home-a")
    assert original and all(v["state"] == "passed" for v in original)
    with read_only(untarred):
        moved = _verify_json(untarred, tmp_path / "home-b")  # a fresh host cache: checks run
        assert [v["variant"] for v in moved] == [v["variant"] for v in original]
        assert all(v["state"] == "passed" and not v["cached"] for v in moved)
        done = _cli("embed", "--model", str(untarred), "--text", "a red circle",
                    home=tmp_path / "home-b")  # fmt: skip
        assert done.returncode == 0, done.stderr


def _without_probe(micro_bundle: Path, dest: Path) -> Path:
    """An older bundle: no probe set (made before they existed)."""
    shutil.copytree(micro_bundle, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest.pop("probe")
    shutil.rmtree(dest / "probe")
    write_manifest(dest, manifest)
    return dest


def test_refresh_on_a_read_only_bundle_says_what_to_do(micro_bundle, tmp_path):
    old = _without_probe(micro_bundle, tmp_path / "old")
    manifest = (old / MANIFEST).read_bytes()
    with read_only(old):
        done = _cli("verify", str(old), "--refresh", home=tmp_path / "home")
    # Before: an OSError traceback from write_probe's mkdir.
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr
    assert f"bundle {old}: cannot write its probe set" in done.stderr
    assert "Copy the bundle to a writable folder" in done.stderr
    assert (old / MANIFEST).read_bytes() == manifest and not (old / "probe").exists()
    copy = tmp_path / "copy"
    shutil.copytree(old, copy)
    done = _cli("verify", str(copy), "--refresh", home=tmp_path / "home")  # the advice works
    assert done.returncode == 0, done.stderr
    assert Bundle.open(copy).manifest["probe"]["reference"].startswith("reference variant on ")


EDITS = {
    "variant without an image tower": (lambda m: m["variants"][0].pop("image"),
                                       "variant 'onnx-fp32' has no image tower"),
    "graph file null": (lambda m: m["variants"][0]["text"].update(file=None),
                        "variant 'onnx-fp32' text.file is None, not a name"),
    "file entry without size": (lambda m: m["files"]["onnx-fp32/image.onnx"].pop("size"),
                                "files['onnx-fp32/image.onnx'] has no sha256 and size"),
    "files a list": (lambda m: m.update(files=[]), "files is not an object"),
    "variants an object": (lambda m: m.update(variants={}), "variants is not a list"),
    "gate a string": (lambda m: m["variants"][0].update(gate="passed"),
                      "variant 'onnx-fp32' gate is not an object"),
    "probe count a string": (lambda m: m["probe"].update(n_texts="16"),
                             "probe.n_texts is '16', not a count"),
    "batch size zero": (lambda m: m["variants"][0]["image"].update(batch_sizes=[0]),
                        "image.batch_sizes is [0], not a list of positive integers"),
}  # fmt: skip


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_manifest_of_the_wrong_shape_is_refused_by_name(micro_bundle, tmp_path, edit):
    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    change, expected = EDITS[edit]
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    # Before: KeyError / TypeError / AttributeError from deep inside Bundle.open or the check.
    with pytest.raises(EdgeclipError) as err:
        Bundle.open(bundle)
    assert str(bundle / MANIFEST) in str(err.value) and expected in str(err.value)
    assert "re-create the bundle" in str(err.value)


def test_info_on_a_manifest_of_the_wrong_shape_is_one_line(micro_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    (bundle / MANIFEST).write_text(json.dumps(["not", "a", "manifest"]))
    done = _cli("info", str(bundle), home=tmp_path / "home")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{bundle / MANIFEST} is not an edgeclip manifest" in done.stderr


def _with_a_copy_variant(old: Path) -> set[str]:
    """Add ``onnx-copy`` (the reference's graphs copied) to ``old``; its file table's paths."""
    manifest = json.loads((old / MANIFEST).read_text())
    extra = json.loads(json.dumps(manifest["variants"][0]).replace("onnx-fp32/", "onnx-copy/"))
    extra.update(id="onnx-copy", precision="fp16", options={})
    manifest["variants"].append(extra)
    shutil.copytree(old / "onnx-fp32", old / "onnx-copy")
    return set(write_manifest(old, manifest)["files"])


def test_refresh_lists_the_probe_only_and_keeps_an_altered_variant_refused(micro_bundle, tmp_path):
    old = _without_probe(micro_bundle, tmp_path / "old")
    listed = _with_a_copy_variant(old)
    with open(old / "onnx-copy" / "text.onnx", "ab") as fh:
        fh.write(b"\0")  # altered after the manifest recorded it
    (old / "manifest.json.tmp").write_text('{"half')  # what a killed manifest write leaves
    (old / ".DS_Store").write_bytes(b"Finder")
    done = _cli("verify", str(old), "--refresh", "--json", home=tmp_path / "home")
    # Before: the refresh re-hashed every file in the folder: the altered graph was trusted
    # again, and the stray files were listed (manifest.json.tmp, consumed by the write itself,
    # was then "missing" and the whole bundle refused).
    assert done.returncode == 1, done.stderr
    rows = {r["variant"]: r for r in json.loads(done.stdout)["variants"]}
    assert rows["onnx-fp32"]["state"] == "passed"
    assert rows["onnx-copy"]["state"] == "failed"
    assert "onnx-copy/text.onnx" in rows["onnx-copy"]["reason"]
    files = json.loads((old / MANIFEST).read_text())["files"]
    probe = {f"probe/{n}.npy" for n in ("images", "texts", "reference_image", "reference_text")}
    assert set(files) == listed | probe  # no .DS_Store, no manifest.json.tmp
    (old / ".DS_Store").unlink()
    assert _cli("verify", str(old), home=tmp_path / "home").returncode == 1  # still only onnx-copy


@pytest.mark.parametrize("key", ["reference_text", "n_texts"])
def test_an_unreadable_probe_entry_is_named_and_refresh_repairs_it(micro_bundle, tmp_path, key):
    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["probe"].pop(key)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    home = tmp_path / "home"
    done = _cli("verify", str(bundle), home=home)
    # Before: n_texts missing was a KeyError traceback; either way the advice it gave
    # (`verify --refresh`) did nothing, since refresh skipped any bundle with a probe entry.
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"bundle {bundle}: its probe set cannot be read (KeyError: '{key}')" in done.stderr
    assert "`edgeclip verify BUNDLE --refresh`" in done.stderr
    done = _cli("verify", str(bundle), "--refresh", "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert [r["state"] for r in json.loads(done.stdout)["variants"]] == ["passed"]
    probe = Bundle.open(bundle).manifest["probe"]
    assert key in probe and probe["reference"].startswith("reference variant on ")


def test_refresh_refuses_to_make_a_probe_from_a_damaged_reference(micro_bundle, tmp_path):
    old = _without_probe(micro_bundle, tmp_path / "old")
    _with_a_copy_variant(old)
    with open(old / "onnx-fp32" / "image.onnx", "ab") as fh:
        fh.write(b"\0")  # the reference altered; onnx-copy intact, so the bundle still opens
    manifest = (old / MANIFEST).read_bytes()
    done = _cli("verify", str(old), "--refresh", home=tmp_path / "home")
    # Before: the probe's reference embeddings were computed from the altered graph, and every
    # other variant was then judged against them.
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"bundle {old}: its reference variant onnx-fp32 is damaged (onnx-fp32/image.onnx: " in done.stderr
    assert "re-download or re-convert the bundle" in done.stderr
    assert (old / MANIFEST).read_bytes() == manifest and not (old / "probe").exists()
