"""converters/: a request of which no backend builds a single variant is refused before the
checkpoint is read, naming what each backend offers; a mixed request still builds the rest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from converters.variants import check_requested
from edgeclip.errors import InputError


@pytest.mark.parametrize("backend, precision", [("litert", "fp16"), ("openvino", "int8-dynamic"),
                                                ("torch", "int8,fp16")])  # fmt: skip
def test_nothing_buildable_is_refused_naming_what_is_offered(backend, precision):
    with pytest.raises(InputError) as err:
        check_requested(backend, precision)
    assert f"--backend {backend!r} --precision {precision!r}: no backend offers" in str(err.value)
    assert f"({backend}: " in str(err.value)


def test_a_mixed_request_is_not_refused():
    check_requested("onnx,litert", "fp16")  # onnx-fp16 is built; litert-fp16 is skipped
    check_requested("litert", "fp16,fp32")


def test_cli_refuses_before_reading_the_checkpoint(tmp_path):
    missing = tmp_path / "no-such-checkpoint"  # reading it would be a ModelNotFoundError
    env = {**os.environ, "EDGECLIP_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "edgeclip", "convert", str(missing), "-o",
                           str(tmp_path / "b"), "--backend", "litert", "--precision", "fp16"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    # Before: the checkpoint was exported and gated, then "litert-fp16: litert has no fp16
    # variant, skipped", and a bundle holding none of what was asked, exit 0.
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no backend offers any of these precisions (litert: fp32, int8," in done.stderr
    assert not (tmp_path / "b").exists()
