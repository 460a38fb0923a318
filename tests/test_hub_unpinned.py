"""An unpinned revision (a branch: zoo entries with ``revision: null``) fetched once, then the
hub gives no answer: the cached copy is used with a warning, as huggingface_hub itself does,
instead of "not found in the cache" for files that are in it. A hub that says no (404, 401)
is still an error. A renamed repo (the hub's 307) is followed. Against the loopback hub
(tests/hubserver.py)."""

from __future__ import annotations

import pytest
from hubserver import TINY_BIG, TINY_FILES, TINY_REPO, TINY_REV, tiny_hub_env

from edgeclip.errors import ModelNotFoundError
from edgeclip.hub import fetch_files

BIG = TINY_FILES[0]["path"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with tiny_hub_env(monkeypatch, tmp_path) as server:
        yield server


def _fetch(files=TINY_FILES):
    return fetch_files(TINY_REPO, None, files, model_name="tiny")


@pytest.mark.parametrize("fault", ["down", "http-500", "http-429"])
def test_a_branch_fetched_once_loads_when_the_hub_gives_no_answer(hub, fault):
    first = _fetch()
    if fault == "down":
        hub.stop()  # before: "not found in the Hugging Face cache ... could not be reached"
    else:
        hub.fail[(TINY_REPO, BIG)] = (int(fault[-3:]), -1)
    with pytest.warns(RuntimeWarning) as warned:
        again = _fetch()
    assert again == first and again[BIG].read_bytes() == TINY_BIG
    msg = str(warned[0].message)
    assert f"{TINY_REPO}@main" in msg and f"commit {TINY_REV}" in msg and "older" in msg
    assert ("ConnectError" if fault == "down" else f"HTTP {fault[-3:]}") in msg


@pytest.mark.parametrize("status", [401, 404])
def test_a_hub_that_says_no_is_still_an_error_for_a_branch(hub, status):
    _fetch()
    if status == 404:
        del hub.repos[TINY_REPO][TINY_REV][BIG]  # the file was removed from the branch
    else:
        hub.fail[(TINY_REPO, BIG)] = (401, -1)
    with pytest.raises(ModelNotFoundError):
        _fetch()


def test_a_branch_never_fetched_names_the_cache_folder_it_looked_in(hub, tmp_path):
    _fetch(["config.json"])
    hub.stop()
    with pytest.raises(ModelNotFoundError) as err:
        _fetch()  # the model file was never downloaded: nothing to fall back on
    msg = str(err.value)
    assert "could not be reached" in msg and BIG in msg
    snapshots = tmp_path / "hf_home" / "hub" / "models--org--tiny-clip" / "snapshots"
    assert f"({snapshots})" in msg  # before: .../snapshots/main, a folder that never exists


@pytest.mark.parametrize("revision", [TINY_REV, None])
def test_a_renamed_repo_is_followed_and_cached_under_the_name_asked_for(hub, revision):
    hub.moved["old-org/old-name"] = TINY_REPO  # the hub's relative 307 for a renamed repo
    paths = fetch_files("old-org/old-name", revision, TINY_FILES, model_name="tiny")
    assert paths[BIG].read_bytes() == TINY_BIG and "models--old-org--old-name" in str(paths[BIG])
    assert ("HEAD", f"/{TINY_REPO}/resolve/{revision or 'main'}/{BIG}", None) in hub.requests
