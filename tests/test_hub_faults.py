"""The download path under faults, against the loopback hub (tests/hubserver.py) and real files:
error statuses, a hub that goes silent, a bad timeout setting, a resumed download, a cache that
is read-only or on a full disk (a real file-size limit), Ctrl-C (a real SIGINT) and two
processes downloading the same file. Each ends in one error that names the file and the fix, or
in the right file; a partial file is never used and nothing complete is lost.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hubserver import (
    ANY,
    TINY_BIG,
    TINY_FILES,
    TINY_REPO,
    TINY_REV,
    TINY_SMALL,
    hub_env,
    sha256,
    tiny_hub_env,
)
from test_index_crash import shared_dir, unprivileged  # noqa: F401  (shared_dir: a fixture)

from edgeclip.errors import EdgeclipError, InputError, IntegrityError, ModelNotFoundError
from edgeclip.hub import fetch_files

REPO, REV, BIG, SMALL, FILES = TINY_REPO, TINY_REV, TINY_BIG, TINY_SMALL, TINY_FILES
FOLDER = "models--org--tiny-clip"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with tiny_hub_env(monkeypatch, tmp_path) as server:
        yield server


def _leftovers(cache) -> list[str]:
    """Blobs and partial downloads in the cache (a failed download must leave neither)."""
    blobs = cache / FOLDER / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def _bounded(fn, seconds: float = 240):
    """Run ``fn`` in a thread; fail the test (instead of hanging it) if it does not return."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


_CHILD = textwrap.dedent(
    """
    import json, sys
    from edgeclip.errors import EdgeclipError
    from edgeclip.hub import fetch_files
    try:
        paths = fetch_files({repo!r}, {rev!r}, {files!r}, model_name="tiny")
    except EdgeclipError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    print(json.dumps({{k: str(v) for k, v in paths.items()}}))
    """
).format(repo=REPO, rev=REV, files=FILES)


def _child(**kwargs) -> subprocess.Popen:
    """``fetch_files`` in another process, with this test's environment (HF_ENDPOINT, HF_HOME)."""
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ), **kwargs,
    )  # fmt: skip


# ---------------------------------------------------------------- what the hub answers


@pytest.mark.parametrize(
    "status, says",
    [(401, "HF_TOKEN"), (403, "hf auth login"), (429, "rate-limiting"), (500, "hub's side"),
     (503, "Try again later")],
)  # fmt: skip
def test_an_error_status_is_named_with_its_fix(hub, tmp_path, status, says):
    """Before: every status was "not found in the cache and the hub could not be reached", with
    offline advice (unset HF_HUB_OFFLINE, copy a cache) that fits none of them."""
    hub.fail[(REPO, "onnx/model.onnx")] = (status, -1)
    with pytest.raises(ModelNotFoundError) as err:
        _bounded(lambda: fetch_files(REPO, REV, FILES, model_name="tiny"))
    msg = str(err.value)
    assert f"HTTP {status}" in msg and f"{REPO}@{REV}/onnx/model.onnx" in msg and says in msg
    assert "could not be reached" not in msg and "HF_HUB_OFFLINE" not in msg
    assert len(hub.requests) == 1  # the fast probe: no retry loop
    assert _leftovers(tmp_path / "hf_home" / "hub") == []
    hub.fail.clear()
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG


def test_unknown_repo_answered_401_mentions_the_token(hub):
    # the real hub answers 401 RepoNotFound for a private or gated repo without a token too
    with pytest.raises(ModelNotFoundError) as err:
        fetch_files("org/private", REV, ["config.json"])
    assert "has no org/private@" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_a_lasting_5xx_after_the_probe_is_named_and_keeps_the_finished_file(hub, tmp_path):
    """The probe covers the first file only; huggingface_hub retries a later file's 5xx with
    back-off (about 23 s), then raised "LocalEntryNotFoundError ... check your connection",
    reported as "downloading failed ... the partial download is never used"."""
    hub.fail[(REPO, "config.json")] = (500, -1)
    with pytest.raises(ModelNotFoundError) as err:
        _bounded(lambda: fetch_files(REPO, REV, FILES, model_name="tiny"))
    msg = str(err.value)
    assert "HTTP 500" in msg and f"{REPO}@{REV}/config.json" in msg and "hub's side" in msg
    assert "check your connection" not in msg
    assert _leftovers(tmp_path / "hf_home" / "hub") == [sha256(BIG)]  # the good file is kept
    hub.fail.clear()
    hub.clear_log()
    assert fetch_files(REPO, REV, FILES)["config.json"].read_bytes() == SMALL
    assert not [r for r in hub.requests if r[1].startswith("/cdn/")]  # not downloaded again


# ---------------------------------------------------------------- a hub that goes silent


def test_a_hub_that_never_answers_times_out_naming_the_setting(hub, monkeypatch):
    """Before: "could not be reached (ReadTimeout: timed out)" and offline advice; nothing said
    how long it waited or that EDGECLIP_HUB_TIMEOUT sets it."""
    monkeypatch.setenv("EDGECLIP_HUB_TIMEOUT", "0.5")
    hub.stall.add(ANY)
    with pytest.raises(ModelNotFoundError) as err:
        _bounded(lambda: fetch_files(REPO, REV, FILES, model_name="tiny"))
    msg = str(err.value)
    assert "did not answer within 0.5 s" in msg and "EDGECLIP_HUB_TIMEOUT" in msg
    assert "onnx/model.onnx" in msg and hub.url in msg


def test_a_download_that_stalls_midway_gives_up_with_the_timeout_and_keeps_nothing(
    hub, monkeypatch, tmp_path
):
    """Before: EDGECLIP_HUB_TIMEOUT did not reach the body reads (huggingface_hub's own 10 s,
    fixed at import, six attempts) and the error was "failed (ReadTimeout: timed out)"."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DOWNLOAD_TIMEOUT
    monkeypatch.setenv("EDGECLIP_HUB_TIMEOUT", "0.3")
    hub.hold[(REPO, "onnx/model.onnx")] = 1000  # 1000 bytes, then silence
    with pytest.raises(ModelNotFoundError) as err:
        _bounded(lambda: fetch_files(REPO, REV, FILES, model_name="tiny"))
    msg = str(err.value)
    assert "did not answer within 0.3 s" in msg and "EDGECLIP_HUB_TIMEOUT" in msg
    assert "onnx/model.onnx" in msg
    assert constants.HF_HUB_DOWNLOAD_TIMEOUT == before  # restored for everyone else
    assert _leftovers(tmp_path / "hf_home" / "hub") == []  # no blob, no .incomplete
    hub.hold.clear()
    hub.release()
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_timeout_setting_is_refused_before_any_request(hub, monkeypatch, value):
    """Before: "abc" and "-1" were ValueError tracebacks; "0" failed every request at once as
    "the hub could not be reached"."""
    monkeypatch.setenv("EDGECLIP_HUB_TIMEOUT", value)
    with pytest.raises(InputError) as err:
        fetch_files(REPO, REV, FILES)
    assert f"EDGECLIP_HUB_TIMEOUT={value!r}" in str(err.value) and "30" in str(err.value)
    assert hub.requests == []


# ---------------------------------------------------------------- cut, resumed, verified


def test_a_cut_download_resumes_from_the_bytes_it_kept_and_is_verified(monkeypatch, tmp_path):
    """huggingface_hub writes 10 MiB chunks: a cut after 11 MiB resumes with a Range from the
    10 MiB it kept (test_hub shows a smaller file restarting from 0); the result is hashed."""
    data = np.random.default_rng(1).bytes(11 * 2**20 + 12_345)
    spec = [{"path": "big.onnx", "sha256": sha256(data), "size": len(data)}]
    with hub_env(monkeypatch, tmp_path, {REPO: {REV: {"big.onnx": data}}}) as server:
        server.cut[(REPO, "big.onnx")] = 1
        server.cut_after[(REPO, "big.onnx")] = 11 * 2**20
        path = _bounded(lambda: fetch_files(REPO, REV, spec))["big.onnx"]
        ranges = [r for m, p, r in server.requests if m == "GET" and p.startswith("/cdn/")]
    assert ranges == [None, f"bytes={10 * 2**20}-"]
    assert sha256(path.read_bytes()) == sha256(data)
    assert _leftovers(tmp_path / "hf_home" / "hub") == [sha256(data)]


# ---------------------------------------------------------------- the cache folder


def test_a_read_only_cache_is_named_with_the_fix_and_cached_files_still_load(
    monkeypatch,
    shared_dir,  # noqa: F811
):
    """Before: "downloading ... failed (PermissionError ...). The partial download is never
    used; try again": trying again can only fail the same way."""
    with hub_env(monkeypatch, shared_dir, {REPO: {REV: {"onnx/model.onnx": BIG,
                                                        "config.json": SMALL}}}) as server:  # fmt: skip
        empty, filled = shared_dir / "empty", shared_dir / "filled"
        empty.mkdir()
        fetch_files(REPO, REV, FILES, cache_dir=filled)  # as ourselves; read-only for nobody
        server.clear_log()
        with unprivileged():
            with pytest.raises(ModelNotFoundError) as err:
                fetch_files(REPO, REV, FILES, cache_dir=empty, model_name="tiny")
            again = fetch_files(REPO, REV, FILES, cache_dir=filled)
        assert server.requests[-1][0] == "HEAD"  # no body fetched for the read-only cache
    msg = str(err.value)
    assert "not writable" in msg and str(empty) in msg and "HF_HUB_CACHE" in msg
    assert "onnx/model.onnx" in msg and "try again" in msg
    assert again["onnx/model.onnx"].read_bytes() == BIG  # complete files still load


def test_a_corrupt_file_in_a_read_only_cache_is_refused_not_a_traceback(
    monkeypatch,
    shared_dir,  # noqa: F811
):
    """Before: deleting the corrupt file raised PermissionError (a traceback)."""
    with hub_env(monkeypatch, shared_dir, {REPO: {REV: {"onnx/model.onnx": BIG,
                                                        "config.json": SMALL}}}):  # fmt: skip
        cache = shared_dir / "cache"
        blob = fetch_files(REPO, REV, FILES, cache_dir=cache)["config.json"].resolve()
        blob.write_bytes(b'{"projection_dim": 9}')  # same size, other bytes, new mtime
        with unprivileged():
            with pytest.raises(IntegrityError) as err:
                fetch_files(REPO, REV, FILES, cache_dir=cache, model_name="tiny")
    msg = str(err.value)
    assert "config.json" in msg and "could not be deleted" in msg and str(blob) in msg
    assert "HF_HUB_CACHE" in msg


def test_a_truncated_cached_file_offline_says_the_refetch_needs_the_network(hub, monkeypatch):
    blob = fetch_files(REPO, REV, FILES)["onnx/model.onnx"].resolve()
    blob.write_bytes(BIG[:1000])  # a truncated onnx in the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IntegrityError) as err:
        fetch_files(REPO, REV, FILES, model_name="tiny")
    msg = str(err.value)
    assert "1000 bytes" in msg and "unset HF_HUB_OFFLINE" in msg and not blob.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG


def test_a_full_disk_is_named_and_leaves_no_partial_file(hub, tmp_path):
    """A real file-size limit (EFBIG, as ENOSPC on a full disk; Python ignores SIGXFSZ).
    Before: "downloading ... failed (OSError: [Errno 27] File too large) ... try again"."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    child = _child(preexec_fn=limit)
    out, err = child.communicate(timeout=240)
    assert child.returncode == 2 and "Traceback" not in err, err
    assert "disk is full" in err and "onnx/model.onnx" in err and "HF_HUB_CACHE" in err
    assert _leftovers(tmp_path / "hf_home" / "hub") == []  # no blob, no .incomplete
    assert fetch_files(REPO, REV, FILES)["onnx/model.onnx"].read_bytes() == BIG


def test_an_unwritable_bundle_folder_is_named_and_the_download_is_kept(
    monkeypatch,
    shared_dir,  # noqa: F811
):
    """Before: PermissionError from mkdir, a traceback, after the whole download."""
    pytest.importorskip("onnx")
    from edgeclip.hub_bundle import bundle_from_hub_onnx

    files = {"onnx/model.onnx": BIG, "config.json": b"{}", "preprocessor_config.json": b"{}"}
    source = {"kind": "hub-onnx", "repo": REPO, "revision": REV,
              "files": [{"role": "model", "path": "onnx/model.onnx"},
                        {"role": "config", "path": "config.json"}]}  # fmt: skip
    locked = shared_dir / "locked"
    locked.mkdir()
    with hub_env(monkeypatch, shared_dir, {REPO: {REV: files}}):
        (shared_dir / "hf_home").chmod(0o777)  # the HF cache stays writable for nobody
        with unprivileged():
            with pytest.raises(EdgeclipError) as err:
                bundle_from_hub_onnx("tiny", {}, source, locked / "bundles")
            kept = fetch_files(REPO, REV, source["files"])  # offline-able: already cached
    msg = str(err.value)
    assert "not writable" in msg and str(locked) in msg and "EDGECLIP_CACHE" in msg
    assert kept["onnx/model.onnx"].read_bytes() == BIG


# ---------------------------------------------------------------- Ctrl-C and two processes


def test_ctrl_c_mid_download_keeps_nothing_partial_and_frees_the_lock(hub, tmp_path):
    hub.hold[(REPO, "onnx/model.onnx")] = 50_000
    child = _child(preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(lambda: any(p.startswith("/cdn/") for _, p, _ in hub.requests), "the GET")
        incomplete = tmp_path / "hf_home" / "hub" / FOLDER / "blobs"
        _wait_for(lambda: any(".incomplete" in n for n in _leftovers(tmp_path / "hf_home" / "hub")),
                  f"a partial file in {incomplete}")  # fmt: skip
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and "interrupted" in err, err
    assert _leftovers(tmp_path / "hf_home" / "hub") == []  # the partial file was removed
    hub.hold.clear()
    hub.release()
    # the download lock died with the process: the next fetch takes it at once
    assert _bounded(lambda: fetch_files(REPO, REV, FILES))["onnx/model.onnx"].read_bytes() == BIG


def test_two_processes_fetching_at_once_download_once_and_both_get_the_file(hub, tmp_path):
    hub.hold[(REPO, "onnx/model.onnx")] = 50_000
    heads = f"/{REPO}/resolve/{REV}/onnx/model.onnx"
    first = _child()
    children = [first]
    try:
        _wait_for(lambda: any(p.startswith("/cdn/") for _, p, _ in hub.requests), "a GET")
        children.append(_child())
        # the second has asked for the file (probe + metadata) while the first is held
        _wait_for(lambda: sum(m == "HEAD" and p == heads for m, p, _ in hub.requests) >= 4,
                  "the second process's requests")  # fmt: skip
        hub.release()
        results = [c.communicate(timeout=120) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    assert [c.returncode for c in children] == [0, 0], [err for _, err in results]
    assert results[0][0] == results[1][0]  # the same snapshot paths
    assert [p for m, p, _ in hub.requests if m == "GET" and p.startswith("/cdn/")] == [
        f"/cdn/{sha256(BIG)}"
    ]  # one download: the second waited on the lock, then used the finished blob
    assert _leftovers(tmp_path / "hf_home" / "hub") == sorted([sha256(BIG), _git_sha1(SMALL)])


def _git_sha1(data: bytes) -> str:
    from hubserver import git_sha1

    return git_sha1(data)
