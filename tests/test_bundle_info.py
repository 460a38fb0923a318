"""`edgeclip info --json` says what the table says: a variant the manifest ships but whose files
are damaged is failed here in both, and the variant auto-selection picks is the same."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.bundle import MANIFEST, write_manifest

pytest.importorskip("torch")  # the micro fixture bundle is converted here


def _info(bundle: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGECLIP_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "edgeclip", "info", str(bundle), *extra],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def _two_variants_one_damaged(micro_bundle: Path, dest: Path) -> Path:
    """The micro bundle plus a second variant (a copy of its graphs), whose image graph is
    then altered after the manifest recorded it."""
    shutil.copytree(micro_bundle, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    ref = manifest["variants"][0]
    extra = copy.deepcopy(ref)
    extra.update(id="onnx-copy", precision="fp16")
    extra["options"] = {"batch_drift": 0.0, "batch_invariant": True}
    shutil.copytree(dest / "onnx-fp32", dest / "onnx-copy")
    for tower in ("image", "text"):
        extra[tower]["file"] = extra[tower]["file"].replace("onnx-fp32/", "onnx-copy/")
    manifest["variants"].append(extra)
    write_manifest(dest, manifest)
    with open(dest / "onnx-copy" / "image.onnx", "ab") as fh:
        fh.write(b"\0")
    return dest


def _table_states(stdout: str, ids: list[str]) -> dict[str, str]:
    """Variant id -> the table's "on this host" state (the last state word of its row)."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in ids:
            out[words[0]] = next(w for w in reversed(words) if w in ("passed", "failed", "unverified"))
    return out


def test_info_json_and_table_agree_on_a_damaged_variant(micro_bundle, tmp_path):
    bundle = _two_variants_one_damaged(micro_bundle, tmp_path / "b")
    home = tmp_path / "home"
    data = json.loads(_info(bundle, home, "--json").stdout)
    # The manifest is still all there, as written...
    assert data["format"] == "edgeclip-bundle" and len(data["variants"]) == 2
    # ...and, before, nothing said that one of its two variants cannot be used here.
    host = data["on_this_host"]
    states = {row["variant"]: row["state"] for row in host["variants"]}
    assert states == {"onnx-fp32": "passed", "onnx-copy": "failed"}
    damaged = next(r for r in host["variants"] if r["variant"] == "onnx-copy")
    assert "onnx-copy/image.onnx" in damaged["reason"]
    assert host["auto"]["variant"] == "onnx-fp32"
    table = _info(bundle, home).stdout
    assert _table_states(table, list(states)) == states
    assert f"auto on this host: {host['auto']['variant']} (" in table


def test_info_on_a_probe_entry_without_its_counts_prints_the_table(micro_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(micro_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    for key in ("n_images", "labels"):  # the on-device check reads only the probe's files
        manifest["probe"].pop(key)
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    done = _info(bundle, tmp_path / "home")  # before: KeyError 'n_images' traceback, exit 1
    assert "probe     ? images, 16 texts, 0 labels; reference torch-fp32" in done.stdout
    assert _table_states(done.stdout, ["onnx-fp32"]) == {"onnx-fp32": "passed"}
