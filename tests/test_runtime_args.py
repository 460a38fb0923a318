"""The runtime's arguments on a real bundle: a device no installed runtime offers, counts that are
not counts, and texts that are not text are refused by name with the fix, before any work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import edgeclip
from edgeclip.errors import InputError


@pytest.fixture(scope="module")
def model(micro_bundle):
    return edgeclip.load(micro_bundle)


def test_a_device_no_installed_runtime_offers_is_refused_with_what_each_offers(micro_bundle):
    with pytest.raises(InputError) as err:
        edgeclip.load(micro_bundle, device="no-such-device")
    text = str(err.value)
    # micro_bundle has ONNX variants only: ONNX Runtime says what it offers, and only it speaks
    assert "'no-such-device'" in text and "CPUExecutionProvider" in text
    assert "OpenVINO" not in text and "device='auto'" in text
    assert edgeclip.load(micro_bundle, device="cpu").encode_text("a cat").shape[0] == 1


def test_the_cli_names_the_device_without_a_traceback(micro_bundle):
    run = subprocess.run([sys.executable, "-m", "edgeclip", "classify", "x.jpg", "--model",
                          str(micro_bundle), "--device", "no-such-device", "--labels", "cat", "dog"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "'no-such-device'" in run.stderr, run.stderr


@pytest.mark.parametrize("threads", [-1, "2", 2.0, True])
def test_threads_must_be_a_count(micro_bundle, threads):
    with pytest.raises(InputError, match="threads must be a positive integer, 0 or None"):
        edgeclip.load(micro_bundle, threads=threads)


@pytest.mark.parametrize("threads", [-2, "2"])
def test_verify_bundle_refuses_a_bad_thread_count_and_caches_no_verdict(micro_bundle, threads, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    # before: every check failed on the count, and those "failed" verdicts were cached for the host
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path))
    with pytest.raises(InputError, match="threads must be a positive integer, 0 or None"):
        edgeclip.verify_bundle(edgeclip.Bundle.open(micro_bundle), threads=threads)
    assert not (tmp_path / "device_checks.json").exists()
    here = set(edgeclip.available_backends())
    statuses = edgeclip.verify_bundle(edgeclip.Bundle.open(micro_bundle))
    assert all(st.usable for st in statuses if st.variant.backend in here)
    assert all("pip install" in st.reason for st in statuses if st.variant.backend not in here)


def test_a_variant_of_a_backend_this_edgeclip_lacks_says_so(micro_bundle, tmp_path, monkeypatch):
    import json
    import shutil

    from edgeclip.bundle import write_manifest

    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    copy = tmp_path / "newer"
    shutil.copytree(micro_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"][0].update(backend="tvm", id="tvm-fp32")  # from a newer edgeclip
    write_manifest(copy, manifest)
    statuses = {st.variant.id: st for st in edgeclip.verify_bundle(edgeclip.Bundle.open(copy))}
    # before: "backend tvm is not installed here", as if a pip install would fix it
    assert statuses["tvm-fp32"].state == "unverified"
    assert "this edgeclip has no backend 'tvm'" in statuses["tvm-fp32"].reason


def test_zero_threads_is_the_runtimes_default(micro_bundle):
    assert edgeclip.load(micro_bundle, threads=0).encode_text("a cat").shape[0] == 1


@pytest.mark.parametrize("batch_size", [0, -1, "3", 2.5])
def test_batch_size_must_be_a_positive_count(model, micro_bundle, batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        model.encode_text(["a", "b"], batch_size=batch_size)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        model.encode_image([np.zeros((8, 8, 3), np.uint8)], batch_size=batch_size)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        edgeclip.load(micro_bundle, batch_size=batch_size)


def test_batch_size_one_gives_the_same_rows(model):
    texts = ["a photo of a cat", "a dog", "a red car"]
    np.testing.assert_allclose(model.encode_text(texts, batch_size=1), model.encode_text(texts),
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("texts", [None, 5, b"a cat", {"a": 1}])
def test_texts_that_are_not_text_are_named(model, texts):
    with pytest.raises(InputError, match=f"a str or a list of str, got {type(texts).__name__}"):
        model.encode_text(texts)


def test_any_iterable_of_str_is_texts(model):
    want = model.encode_text(["a cat", "a dog"])
    np.testing.assert_allclose(model.encode_text(("a cat", "a dog")), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_text(t for t in ["a cat", "a dog"]), want, atol=1e-6)


def _embed_to(bundle, output) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeclip", "embed", "a cat", "-o", str(output),
                           "--model", str(bundle)], capture_output=True, text=True, timeout=120)  # fmt: skip


def test_embed_refuses_an_output_it_cannot_write_before_any_work(micro_bundle, tmp_path):
    missing = _embed_to(micro_bundle, tmp_path / "no" / "such" / "e.npy")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "does not exist" in missing.stderr and "mkdir -p" in missing.stderr
    folder = _embed_to(micro_bundle, tmp_path)
    assert folder.returncode == 2 and "it is a directory" in folder.stderr
    assert not (tmp_path.parent / f"{tmp_path.name}.npy").exists()  # np.save's renaming


def test_embed_writes_exactly_the_name_given(micro_bundle, tmp_path):
    out = tmp_path / "vectors.bin"
    run = _embed_to(micro_bundle, out)
    assert run.returncode == 0, run.stderr
    assert np.load(out).shape[0] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["vectors.bin"]


@pytest.mark.parametrize("wordless", ["&nbsp;", "\u200b", "&amp;nbsp;  "])
def test_a_label_with_no_words_once_cleaned_is_refused_by_position(model, tmp_path, wordless):
    # Before, "&nbsp;" passed the empty-label check and ranked as the empty prompt's vector.
    from PIL import Image

    photo = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(photo)
    with pytest.raises(InputError) as err:
        model.classify(photo, ["cat", wordless])
    assert err.value.param == "labels[1]"
    assert "no text once cleaned" in str(err.value) or "invisible" in str(err.value)
    assert repr(wordless) in str(err.value)
    assert [label for label, _ in model.classify(photo, ["cat", "dog"])] in (["cat", "dog"], ["dog", "cat"])
