"""ONNX Runtime's CPU arena is shrunk after each run (``EDGECLIP_ORT_ARENA_SHRINK``, default on):
a real session on the TinyCLIP-8M-shaped bundle, in fresh processes, holds far less memory
after a batch of 32 than with the arena kept, and computes the same vectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import gc, json, sys, time
import numpy as np
import edgeclip
model = edgeclip.load(sys.argv[1], backend="onnx", precision="fp32", verify=False)
pixels = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
vectors = model.encode_pixels(pixels, batch_size=32)
del pixels
gc.collect()
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
print(json.dumps({"rss_mib": rss, "first": vectors[0].tolist()}))
"""


def _after_batch_32(bundle, shrink: str) -> dict:
    env = {**os.environ, "EDGECLIP_ORT_ARENA_SHRINK": shrink}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bundle)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_arena_is_given_back_after_a_large_batch_and_vectors_are_unchanged(tinyclip8m_bundle):
    kept = _after_batch_32(tinyclip8m_bundle, "0")
    shrunk = _after_batch_32(tinyclip8m_bundle, "1")
    # a batch of 32 at 224 px needs well over 100 MiB of activations; kept, they stay resident
    assert shrunk["rss_mib"] < kept["rss_mib"] - 60, (kept["rss_mib"], shrunk["rss_mib"])
    np.testing.assert_allclose(shrunk["first"], kept["first"], atol=1e-6)


def test_the_setting_turns_the_run_options_off(monkeypatch):
    from edgeclip.backends.onnxruntime import _run_options

    monkeypatch.setenv("EDGECLIP_ORT_ARENA_SHRINK", "0")
    assert _run_options() is None
    monkeypatch.delenv("EDGECLIP_ORT_ARENA_SHRINK")
    options = _run_options()
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
