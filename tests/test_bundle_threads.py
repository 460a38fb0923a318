"""A bad thread count given to `edgeclip verify` / `info` (or to a LiteRT session) is refused as
the caller's mistake: it never leaves a failed verdict in this host's cache, which every later
load would have read as "this variant fails here"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the micro fixture bundle is converted here
pytest.importorskip("openvino")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import edgeclip  # noqa: E402
from edgeclip.errors import InputError  # noqa: E402
from edgeclip.verify import CACHE_NAME  # noqa: E402


@pytest.fixture(scope="module")
def three_backends(micro_bundle, micro_hf_checkpoint, tmp_path_factory) -> Path:
    from converters.add_variants import add_variants

    bundle = tmp_path_factory.mktemp("threads") / "micro"
    shutil.copytree(micro_bundle, bundle)
    add_variants(bundle, micro_hf_checkpoint, backends="openvino,litert", precisions="fp32",
                 n_calib=4, n_eval=8, log=lambda _: None,
                 builder_options={"litert": {"batch_sizes": [1], "text_lengths": [16]}})  # fmt: skip
    return bundle


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLIP_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "edgeclip", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("command", ["verify", "info"])
def test_negative_threads_are_refused_before_any_check(three_backends, tmp_path, command):
    home = tmp_path / "home"
    done = _cli(command, str(three_backends), "--threads", "-3", home=home)
    # Before: exit 0 (info) / 1 (verify) with openvino-* and litert-* "failed on this host",
    # and those verdicts cached, so a plain `verify` afterwards still said "failed (cached)".
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--threads -3: give a positive number of threads" in done.stderr
    assert not (home / CACHE_NAME).exists()
    done = _cli("verify", str(three_backends), "--json", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    states = {r["variant"]: r["state"] for r in json.loads(done.stdout)["variants"]}
    assert states == {"onnx-fp32": "passed", "openvino-fp32": "passed", "litert-fp32": "passed"}


def test_litert_refuses_a_bad_thread_count_and_caches_no_verdict(three_backends, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    monkeypatch.setenv("EDGECLIP_HOME", str(tmp_path / "home"))
    bundle = edgeclip.Bundle.open(three_backends)
    # verify_bundle refuses the count before any check, so no verdict is written at all
    with pytest.raises(InputError, match=r"threads must be a positive integer, 0 or None"):
        edgeclip.verify_bundle(bundle, threads=-2)
    assert not (tmp_path / "home" / CACHE_NAME).exists()
    # a LiteRT session asked for directly says so too (the check would record no verdict)
    from edgeclip.backends import get_backend

    (litert,) = [v for v in bundle.variants if v.id == "litert-fp32"]
    with pytest.raises(InputError, match=r"LiteRT threads=-2: give a positive number"):
        get_backend("litert").open(three_backends / litert.image.file, threads=-2)
    status = {st.variant.id: st.state for st in edgeclip.verify_bundle(bundle, threads=1)}
    assert status["litert-fp32"] == "passed"
