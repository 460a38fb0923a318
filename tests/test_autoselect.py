"""Auto selection: per-backend rule table, a real probe across backends, cached per host and bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgeclip
from edgeclip.autoselect import PRECISION_ORDER, best_per_backend, fastest
from edgeclip.bundle import Bundle

pytest.importorskip("openvino")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def two_backend_bundle(micro_bundle, micro_hf_checkpoint, tmp_path_factory):
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("auto") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(
        bundle, micro_hf_checkpoint, backends="onnx,openvino", precisions="int8-dynamic,fp32",
        n_calib=8, n_eval=16, keep_failed=True, log=lambda _: None,
    )  # fmt: skip
    return bundle


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGECLIP_PROBE", raising=False)
    return tmp_path / "home"


def _usable(bundle_dir):
    """Which variants passed the on-device check on this host (whatever its INT8 kernels)."""
    from edgeclip.selection import verify_all

    return {st.variant.id for st in verify_all(Bundle.open(bundle_dir)) if st.usable}


def test_rule_table_picks_the_first_usable_precision_within_a_backend(two_backend_bundle, home):
    bundle = Bundle.open(two_backend_bundle)
    assert {"onnx-fp32", "onnx-int8-dynamic", "openvino-fp32"} <= {v.id for v in bundle.variants}
    usable = _usable(two_backend_bundle)
    picks = best_per_backend(bundle.variants, ["onnx", "openvino"], lambda v: v.id in usable)
    for pick in picks:  # the best-ranked usable one of its backend
        mine = [v for v in bundle.variants if v.backend == pick.backend and v.id in usable]
        assert pick.precision == min((v.precision for v in mine), key=PRECISION_ORDER.index)
    # whatever passed here, int8-dynamic outranks fp32 when both did
    assert PRECISION_ORDER.index("int8-dynamic") < PRECISION_ORDER.index("fp32")
    nothing = best_per_backend(bundle.variants, ["onnx"], lambda v: False)
    assert nothing == []


def test_auto_probes_once_then_reads_the_cache(two_backend_bundle, home):
    usable = _usable(two_backend_bundle)
    model = edgeclip.load(two_backend_bundle)
    assert "probed now" in model.selection_reason
    cache = json.loads((home / "probe.json").read_text())
    (host_entries,) = cache.values()
    (entry,) = host_entries.values()
    rates = entry["pairs_per_s"]
    # every variant that passed at conversion and is not known to fail here is timed
    bundle = Bundle.open(two_backend_bundle)
    assert set(rates) == usable & {v.id for v in bundle.variants if v.passed or v.is_reference}
    assert all(r > 0 for r in rates.values())
    served = fastest([v for v in bundle.variants if v.id in usable], rates, ["onnx", "openvino"])
    assert model.variant.id == served.id
    again = edgeclip.load(two_backend_bundle)
    assert "cached" in again.selection_reason and again.variant.id == model.variant.id
    # whichever wins, it embeds like the fp32 reference
    ref = edgeclip.load(two_backend_bundle, backend="onnx", precision="fp32")
    texts = ["a red circle", "a blue square"]
    cos = np.sum(model.encode_text(texts) * ref.encode_text(texts), axis=1)
    assert (cos > 0.99).all()


def test_probe_holds_two_variants_at_most_and_times_every_one(two_backend_bundle, home):
    """King of the hill: when a variant is opened, only the fastest so far is still alive; the
    others' sessions were dropped (garbage), and every variant still gets a rate."""
    import gc
    import weakref

    from edgeclip.autoselect import probe_rates
    from edgeclip.towers import open_towers

    bundle = Bundle.open(two_backend_bundle)
    variants = [v for v in bundle.variants if v.passed or v.is_reference]
    alive: dict[str, weakref.ref] = {}
    held_at_open, released = [], []

    def towers(v):
        gc.collect()
        held_at_open.append(sorted(k for k, ref in alive.items() if ref() is not None))
        pair = open_towers(bundle.root, v, 1, "auto")
        alive[v.id] = weakref.ref(pair[0])
        return pair

    rates, errors = probe_rates(bundle, variants, 1, "auto", towers=towers,
                                release=lambda v: released.append(v.id), hold=2)  # fmt: skip
    assert len(variants) >= 3 and not errors
    # the first two open together; every later one meets only the fastest so far
    assert held_at_open[:2] == [[], [variants[0].id]] and all(len(h) <= 1 for h in held_at_open[2:])
    assert all(rates[v.id] > 0 for v in variants)
    # every variant but the one left holding was released, each once
    assert len(released) == len(set(released)) == len(variants) - 1
    assert set(released) < {v.id for v in variants}


def test_probe_hold_setting(monkeypatch):
    from edgeclip.autoselect import probe_hold
    from edgeclip.errors import InputError

    monkeypatch.setenv("EDGECLIP_PROBE_HOLD", "3")
    assert probe_hold(7) == 3 and probe_hold(2) == 2
    monkeypatch.setenv("EDGECLIP_PROBE_HOLD", "auto")
    assert probe_hold(7) in (2, 7)  # all of them only with >= 4 GiB available
    for bad in ("1", "two", "-3"):
        monkeypatch.setenv("EDGECLIP_PROBE_HOLD", bad)
        with pytest.raises(InputError, match="EDGECLIP_PROBE_HOLD"):
            probe_hold(7)


def test_lean_first_load_releases_checked_sessions(two_backend_bundle, home, monkeypatch):
    """With EDGECLIP_PROBE_HOLD=2 the first auto load still picks the probe's fastest, and
    embeds like the fp32 reference."""
    monkeypatch.setenv("EDGECLIP_PROBE_HOLD", "2")
    model = edgeclip.load(two_backend_bundle)
    rates = json.loads((home / "probe.json").read_text())
    (entry,) = next(iter(rates.values())).values()
    bundle, usable = Bundle.open(two_backend_bundle), _usable(two_backend_bundle)
    served = fastest([v for v in bundle.variants if v.id in usable], entry["pairs_per_s"],
                     ["onnx", "openvino"])  # fmt: skip
    assert model.variant.id == served.id
    ref = edgeclip.load(two_backend_bundle, backend="onnx", precision="fp32")
    cos = np.sum(model.encode_text(["a red circle"]) * ref.encode_text(["a red circle"]), axis=1)
    assert (cos > 0.99).all()


def test_probe_can_be_switched_off(two_backend_bundle, home, monkeypatch):
    usable = _usable(two_backend_bundle)
    monkeypatch.setenv("EDGECLIP_PROBE", "0")
    model = edgeclip.load(two_backend_bundle)
    bundle = Bundle.open(two_backend_bundle)
    first = best_per_backend(bundle.variants, ["onnx", "openvino"], lambda v: v.id in usable)[0]
    assert model.variant.id == first.id and "EDGECLIP_PROBE=0" in model.selection_reason
    assert not (home / "probe.json").exists()


def test_explicit_backend_uses_rule_table_and_openvino_fp32_is_really_f32(two_backend_bundle, home):
    model = edgeclip.load(two_backend_bundle, backend="openvino")
    assert model.variant.id == "openvino-fp32" and "requested backend" in model.selection_reason
    model.warm()
    session = model._image.session()
    import openvino as ov

    # without the hint an AMX/AVX512-BF16 CPU would report bf16 here
    assert session._compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_rates_within_the_tie_margin_go_to_the_smallest_weights_whatever_the_noise(
    two_backend_bundle,
):
    """Two probes of about-equal variants (the AMX Xeon's openvino-int8 and -fp16 run within
    3 % of each other) must not flip the choice: inside the margin, rates are not compared."""
    from edgeclip.autoselect import TIE_MARGIN

    variants = Bundle.open(two_backend_bundle).variants
    by_id = {v.id: v for v in variants}
    pair = [by_id["openvino-fp32"], by_id["onnx-int8-dynamic"]]
    near = 1 + TIE_MARGIN / 2
    order = ["openvino", "onnx"]  # the backend preference favours the fp32 one: size comes first
    for fp32_rate, int8_rate in ((100.0 * near, 100.0), (100.0, 100.0 * near)):
        rates = {"openvino-fp32": fp32_rate, "onnx-int8-dynamic": int8_rate}
        assert fastest(pair, rates, order).id == "onnx-int8-dynamic"
    # outside the margin the faster one wins, whatever its size
    rates = {"openvino-fp32": 100.0 * (1 + 2 * TIE_MARGIN), "onnx-int8-dynamic": 100.0}
    assert fastest(pair, rates, order).id == "openvino-fp32"
    # same size, about the same speed: the backend preference order decides
    same = [by_id["onnx-fp32"], by_id["openvino-fp32"]]
    rates = {"onnx-fp32": 100.0, "openvino-fp32": 100.0 * near}
    assert fastest(same, rates, ["onnx", "openvino"]).id == "onnx-fp32"
    assert fastest(same, rates, ["openvino", "onnx"]).id == "openvino-fp32"


def test_first_load_checks_only_the_variant_it_serves(two_backend_bundle, home):
    """The losers of the speed probe are timed but not checked: their on-device checks cost a
    seven-variant first load 4 s. What is served was checked here, and passed."""
    from edgeclip.verify import CheckCache

    model = edgeclip.load(two_backend_bundle)
    (entry,) = next(iter(json.loads((home / "probe.json").read_text()).values())).values()
    assert len(entry["pairs_per_s"]) >= 3
    (host,) = CheckCache()._read().values()
    checked = {key.split("|")[1]: res["gate"]["passed"] for key, res in host["checks"].items()}
    assert checked[model.variant.id] is True and model.verification.usable
    # the next one is checked only if a faster one failed here
    assert all(not ok for vid, ok in checked.items() if vid != model.variant.id)
    assert len(checked) < len(entry["pairs_per_s"]) or not all(checked.values())


def test_a_winner_that_fails_its_check_gives_way_to_the_next_and_is_released(two_backend_bundle):
    from edgeclip.autoselect import _first_usable

    by_id = {v.id: v for v in Bundle.open(two_backend_bundle).variants}
    timed = [by_id["onnx-fp32"], by_id["openvino-fp32"], by_id["onnx-int8-dynamic"]]
    rates = {"onnx-int8-dynamic": 300.0, "openvino-fp32": 200.0, "onnx-fp32": 0.0}  # 0: could not run
    asked, released = [], []

    def usable(v):
        asked.append(v.id)
        return v.id != "onnx-int8-dynamic"

    best, refused = _first_usable(timed, rates, ["onnx", "openvino"], usable, released.append)
    assert best.id == "openvino-fp32" and refused == ["onnx-int8-dynamic"]
    assert asked == ["onnx-int8-dynamic", "openvino-fp32"]  # the slowest was never checked
    assert [v.id for v in released] == ["onnx-int8-dynamic"]
    nobody, refused = _first_usable(timed, rates, ["onnx"], lambda v: False, None)
    assert nobody is None and refused == ["onnx-int8-dynamic", "openvino-fp32"]


@pytest.mark.parametrize("damage", ["list", "rates-list", "rates-text", "truncated", "host-number"])
def test_a_damaged_probe_cache_is_re_probed_and_rewritten(two_backend_bundle, home, damage):
    edgeclip.load(two_backend_bundle)
    path = home / "probe.json"
    cache = json.loads(path.read_text())
    host = next(iter(cache))
    key = next(iter(cache[host]))
    if damage == "list":
        path.write_text("[1, 2, 3]")
    elif damage == "truncated":
        path.write_text(path.read_text()[:40])
    elif damage == "host-number":
        path.write_text(json.dumps({host: 7}))
    else:
        cache[host][key]["pairs_per_s"] = [1, 2] if damage == "rates-list" else {"onnx-fp32": "fast"}
        path.write_text(json.dumps(cache))
    model = edgeclip.load(two_backend_bundle)
    assert "probed now" in model.selection_reason
    rates = json.loads(path.read_text())[host][key]["pairs_per_s"]
    assert rates and all(isinstance(r, float) and r > 0 for r in rates.values())
