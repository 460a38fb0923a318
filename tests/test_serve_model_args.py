"""``edgeclip serve``'s model arguments reach the model: ``--device`` (a device no installed
runtime offers is named in the answer) and ``--no-verify`` (the opt-out the library has)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="the serve extra is needed: pip install -e '.[serve]'")

from test_serve_helpers import ServeProcess, free_port  # noqa: E402


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-model-args")


def test_a_device_no_runtime_offers_is_named_in_the_answer(micro_bundle, logs):
    with ServeProcess(micro_bundle, "--device", "no-such-device", log_dir=logs) as server:
        r = server.client.post("/v1/embeddings", json={"input": ["a cat"]})
        assert r.status_code >= 500
        message = r.json()["error"]["message"]
        assert "'no-such-device'" in message and "CPUExecutionProvider" in message
    with ServeProcess(micro_bundle, "--device", "cpu", log_dir=logs) as server:
        assert server.client.post("/v1/embeddings", json={"input": ["a cat"]}).status_code == 200


def test_no_verify_serves_what_the_checks_would_refuse(micro_bundle, logs, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(micro_bundle, altered)
    ref = altered / "probe" / "reference_text.npy"
    np.save(ref, np.load(ref) * 1.01)  # the manifest's sha256 no longer matches
    with ServeProcess(altered, log_dir=logs) as server:
        r = server.client.post("/v1/embeddings", json={"input": ["a cat"]})
        assert r.status_code >= 500 and "probe/reference_text.npy" in r.json()["error"]["message"]
    with ServeProcess(altered, "--no-verify", log_dir=logs) as server:
        r = server.client.post("/v1/embeddings", json={"input": ["a cat"]})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) > 0


def test_preload_that_cannot_load_exits_1_with_one_line_not_a_traceback(micro_bundle):
    run = subprocess.run([sys.executable, "-m", "edgeclip", "serve", str(micro_bundle), "--port",
                          str(free_port()), "--device", "no-such-device", "--preload"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "Application startup failed" not in run.stderr
    assert "edgeclip serve: --preload: the model failed to load: device 'no-such-device'" in run.stderr
