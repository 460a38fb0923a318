"""On-device verification: the probe set travels with the bundle, every variant is re-gated on the
host that runs it, and what failed here is never picked and is refused when asked for.

Nothing here assumes that a given INT8 configuration passes on random weights: a variant's
fate on this host is read from the check itself, and the failing case is made on purpose (a
graph altered after gating, re-hashed as if the bundle had been built elsewhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import edgeclip
from edgeclip.bundle import Bundle, write_manifest
from edgeclip.errors import InputError, IntegrityError
from edgeclip.verify import CACHE_NAME, VerificationError

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def int8_bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("verify") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="onnx", precisions="int8-dynamic",
                 n_calib=8, n_eval=16, keep_failed=True, log=lambda _: None)  # fmt: skip
    return bundle


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECLIP_PROBE", "0")  # speed probing is tested in test_autoselect
    return tmp_path / "home"


def _add_noise(path):
    """Noise three times the weights' mean size added to every float weight of the graph."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) > 64:
            arr = onnx.numpy_helper.to_array(init)
            noisy = arr + rng.standard_normal(arr.shape).astype(np.float32) * np.abs(arr).mean() * 3
            init.CopyFrom(onnx.numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, str(path))


def _broken_copy(src, dst):
    """The int8 text graph altered after gating; manifest re-hashed, its gate still 'passed'."""
    shutil.copytree(src, dst)
    _add_noise(dst / "onnx-int8-dynamic" / "text.onnx")
    manifest = json.loads((dst / "manifest.json").read_text())
    write_manifest(dst, manifest)
    return dst


def test_probe_set_is_in_the_bundle_and_small(int8_bundle):
    bundle = Bundle.open(int8_bundle)
    probe = bundle.manifest["probe"]
    assert probe["reference"] == "torch-fp32" and probe["n_images"] == 8
    files = bundle.manifest["files"]
    assert all(probe[k] in files for k in ("images", "texts", "reference_image", "reference_text"))
    assert sum(meta["size"] for rel, meta in files.items() if rel.startswith("probe/")) < 3e6
    for v in bundle.variants:  # every gate records the CPU it was measured on
        assert v.gate.get("isa") and v.gate.get("gated_on")
        assert "batch_drift" in v.options and "batch_invariant" in v.options


def test_first_use_checks_then_later_loads_read_the_cache(int8_bundle, home):
    model = edgeclip.load(int8_bundle, backend="onnx", precision="fp32")
    st = model.verification
    assert st.state == "passed" and not st.cached and st.result["seconds"] > 0
    assert st.host["backend"] == "onnx" and st.host["device"] == "auto"
    assert st.host["device_used"] == "CPUExecutionProvider" == st.result["device_used"]
    cache = json.loads((home / CACHE_NAME).read_text())
    (host,) = cache.values()
    assert host["host"]["cpu"] and len(host["checks"]) == 1
    again = edgeclip.load(int8_bundle, backend="onnx", precision="fp32")
    assert again.verification.cached and again.verification.result == st.result


def test_cached_verdict_reads_no_probe_set(int8_bundle, home, tmp_path, monkeypatch):
    from edgeclip import verify
    from edgeclip.selection import _Verifier

    copy = tmp_path / "copy"
    shutil.copytree(int8_bundle, copy)
    edgeclip.load(copy, backend="onnx", precision="fp32")  # checks once, caches the verdict
    bundle = Bundle.open(copy)
    variant = next(v for v in bundle.variants if v.id == "onnx-fp32")
    towers = _Verifier(bundle, None, "auto", True).towers(variant)
    shutil.rmtree(copy / "probe")  # gone after the bundle was opened and its files checked
    st = verify.status(bundle, variant, towers)
    assert st.state == "passed" and st.cached
    # Without the cached verdict the check must run, and says the probe set is unreadable.
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "fresh-home"))
    with pytest.raises(IntegrityError, match="probe set cannot be read"):
        verify.status(bundle, variant, towers)


def test_auto_picks_only_what_passed_here(int8_bundle, home):
    from edgeclip.selection import verify_all

    statuses = {st.variant.id: st for st in verify_all(Bundle.open(int8_bundle))}
    model = edgeclip.load(int8_bundle)
    assert statuses[model.variant.id].state == "passed"
    int8 = statuses["onnx-int8-dynamic"]
    if int8.state == "failed":  # this host's kernels missed the gate: refused by name too
        with pytest.raises(VerificationError, match="onnx-int8-dynamic"):
            edgeclip.load(int8_bundle, backend="onnx", precision="int8-dynamic")
    else:
        picked = edgeclip.load(int8_bundle, backend="onnx", precision="int8-dynamic")
        assert picked.verification.state == "passed"


def test_variant_broken_after_gating_is_never_picked_and_refused(int8_bundle, home, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    broken = _broken_copy(int8_bundle, tmp_path / "broken")
    variant = Bundle.open(broken).find("onnx", "int8-dynamic")[0]
    assert variant.passed  # the manifest still claims it passed where it was built
    monkeypatch.delenv("EDGECLIP_PROBE")  # the speed probe times it; only its check refuses it
    auto = edgeclip.load(broken)
    assert auto.variant.id != "onnx-int8-dynamic"
    (entry,) = next(iter(json.loads((home / "probe.json").read_text()).values())).values()
    rates = entry["pairs_per_s"]
    from edgeclip.autoselect import fastest
    from edgeclip.backends import PREFERENCE

    timed = [v for v in Bundle.open(broken).variants if v.id in rates]
    first = fastest(timed, rates, list(PREFERENCE))  # the tie rule included
    if first.id == "onnx-int8-dynamic":  # chosen first, then refused by its check
        assert "onnx-int8-dynamic failed here" in auto.selection_reason, auto.selection_reason
    else:  # never the winner, so never checked
        assert "failed here" not in auto.selection_reason
    monkeypatch.setenv("EDGECLIP_PROBE", "0")
    assert edgeclip.load(broken).variant.id != "onnx-int8-dynamic"
    with pytest.raises(VerificationError) as err:
        edgeclip.load(broken, backend="onnx", precision="int8-dynamic")
    text = str(err.value)
    assert "onnx-int8-dynamic" in text and "cosine mean ≥ 0.99" in text and "verify=False" in text
    forced = edgeclip.load(broken, backend="onnx", precision="int8-dynamic", verify=False)
    assert forced.variant.id == "onnx-int8-dynamic" and forced.verification is None
    run = subprocess.run([sys.executable, "-m", "edgeclip", "verify", str(broken)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 1, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("onnx-int8-dynamic"))
    assert "  failed" in row


def test_batch_invariant_embeddings(int8_bundle, home):
    from converters.calibration import synthetic_pairs

    images, _, _ = synthetic_pairs(6, 48, seed=5)
    for precision in ("fp32", "int8-dynamic"):
        try:
            model = edgeclip.load(int8_bundle, backend="onnx", precision=precision)
        except VerificationError:
            continue  # failed on this host: refused, covered above
        batch = model.encode_image(images, invariant=True)
        alone = np.stack([model.encode_image(im)[0] for im in images])
        assert np.abs(batch - alone).max() <= 1e-5, precision
        texts = ["a red circle", "a photo of a blue ring that is quite large", "x"]
        tb = model.encode_text(texts, invariant=True)
        ta = np.stack([model.encode_text(t)[0] for t in texts])
        assert np.abs(tb - ta).max() <= 1e-5, precision


def test_bundle_without_probe_loads_but_only_its_reference(int8_bundle, home, tmp_path,
                                                           monkeypatch):
    old = tmp_path / "old"
    shutil.copytree(int8_bundle, old)
    shutil.rmtree(old / "probe")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("probe")
    write_manifest(old, manifest)
    model = edgeclip.load(old)
    assert model.variant.id == "onnx-fp32"
    monkeypatch.delenv("EDGECLIP_PROBE")  # the probing path says what became of the others
    reason = edgeclip.load(old).selection_reason
    assert reason.startswith("the only variant not known to fail here"), reason
    installed = set(edgeclip.backends.available_backends())
    others = [v.id for v in Bundle.open(old).variants if v.id != "onnx-fp32" and v.backend in installed]
    assert others and all(vid in reason.split("left out, ")[1] for vid in others), reason
    assert "the bundle has no probe set" in reason or "unverified" not in reason
    with pytest.raises(edgeclip.errors.InputError, match="not verified on this host"):
        edgeclip.load(old, backend="onnx", precision="int8-dynamic")
    assert edgeclip.load(old, backend="onnx", precision="int8-dynamic", verify=False)
    run = subprocess.run([sys.executable, "-m", "edgeclip", "verify", str(old), "--refresh"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode in (0, 1), run.stderr
    refreshed = Bundle.open(old)
    assert refreshed.manifest["probe"]["reference"].startswith("reference variant on ")
    assert "probe/images.npy" in refreshed.manifest["files"]


def test_corrupt_cache_is_ignored_and_rewritten(int8_bundle, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / CACHE_NAME).write_text('{"truncated": ')
    model = edgeclip.load(int8_bundle, backend="onnx", precision="fp32")
    assert model.verification.state == "passed" and not model.verification.cached
    assert json.loads((home / CACHE_NAME).read_text())  # valid JSON again


@pytest.mark.parametrize("damage", ["checks-list", "gate-text", "host-text"])
def test_a_damaged_cache_entry_is_checked_again_and_rewritten(int8_bundle, home, damage):
    from edgeclip.verify import CheckCache

    edgeclip.load(int8_bundle, backend="onnx", precision="fp32")
    path = home / CACHE_NAME
    data = json.loads(path.read_text())
    (host_key,) = data
    if damage == "checks-list":
        data[host_key]["checks"] = ["not", "a", "map"]
    elif damage == "gate-text":
        for result in data[host_key]["checks"].values():
            result["gate"] = "passed"
    else:
        data[host_key] = "garbage"
    path.write_text(json.dumps(data))
    model = edgeclip.load(int8_bundle, backend="onnx", precision="fp32")
    assert model.verification.state == "passed" and not model.verification.cached
    (host,) = CheckCache()._read().values()
    assert all(isinstance(r["gate"], dict) for r in host["checks"].values())


def test_altered_probe_file_is_refused(int8_bundle, tmp_path):
    copy_ = tmp_path / "b"
    shutil.copytree(int8_bundle, copy_)
    ref = copy_ / "probe" / "reference_text.npy"
    arr = np.load(ref)
    np.save(ref, arr * 1.01)
    with pytest.raises(IntegrityError, match="probe/reference_text.npy"):
        Bundle.open(copy_)


def test_a_damaged_variant_is_left_out_and_the_rest_still_serve(int8_bundle, tmp_path, home, capsys):
    from edgeclip.cli import main as cli

    copy_ = tmp_path / "b"
    shutil.copytree(int8_bundle, copy_)
    graph = copy_ / "onnx-int8-dynamic" / "image.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes: a bad download or a flipped bit
    graph.write_bytes(bytes(data))
    bundle = Bundle.open(copy_)
    assert [v.id for v in bundle.variants] == ["onnx-fp32"]
    assert bundle.damaged == {"onnx-int8-dynamic": ["onnx-int8-dynamic/image.onnx: sha256 differs from the manifest"]}
    model = edgeclip.load(copy_)
    assert model.variant.id == "onnx-fp32" and model.encode_text(["a cat"]).shape[0] == 1
    with pytest.raises(InputError, match="Left out, its files damaged: onnx-int8-dynamic .*re-convert"):
        edgeclip.load(copy_, backend="onnx", precision="int8")
    assert cli(["verify", str(copy_)]) == 1
    out = capsys.readouterr().out
    assert "its files are damaged (onnx-int8-dynamic/image.onnx: sha256 differs" in out


@pytest.mark.parametrize("recorded, passes", [(None, False), ({"cosine_mean": -1.0, "top1_agreement": 0.0}, True)])
def test_the_on_device_check_applies_the_thresholds_the_variant_was_gated_with(
    micro_bundle, home, tmp_path, recorded, passes
):
    # A bundle gated with its own bar (convert(thresholds=...)) is judged by that bar on the
    # device too; before, the device always applied the defaults.
    copy = tmp_path / "own-bar"
    shutil.copytree(micro_bundle, copy)
    _add_noise(copy / "onnx-fp32" / "image.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    if recorded:
        manifest["variants"][0]["gate"]["thresholds"].update(recorded)
    write_manifest(copy, manifest)
    (st,) = [s for s in edgeclip.verify_bundle(Bundle.open(copy)) if s.variant.id == "onnx-fp32"]
    assert st.usable is passes, st.reason
    assert st.result["gate"]["thresholds"]["cosine_mean"] == (-1.0 if recorded else 0.99)
