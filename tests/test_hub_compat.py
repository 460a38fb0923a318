"""huggingface_hub < 1.0 (what transformers 4.x pins, and setup.cfg allows from 0.26) has no
``errors.RemoteEntryNotFoundError``: every failed fetch was an ImportError traceback there
(checked by hand against huggingface_hub 0.36.0). Here its errors module is given that shape
(the one attribute removed) and the real loopback hub answers (tests/hubserver.py)."""

from __future__ import annotations

import pytest
from hubserver import TINY_REPO, TINY_REV, tiny_hub_env

from edgeclip.errors import ModelNotFoundError
from edgeclip.hub import fetch_files


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.file_download  # noqa: F401  (binds the class where it raises it)
    from huggingface_hub import errors

    with tiny_hub_env(monkeypatch, tmp_path) as server:
        monkeypatch.delattr(errors, "RemoteEntryNotFoundError")
        yield server


@pytest.mark.parametrize(
    "repo, path, says",
    [(TINY_REPO, "nope.json", "has no org/tiny-clip@"), ("org/missing", "x.json", "has no org/missing@")],
)  # fmt: skip
def test_a_missing_file_or_repo_is_named_without_remote_entry_not_found_error(hub, repo, path, says):  # fmt: skip
    with pytest.raises(ModelNotFoundError, match=says):
        fetch_files(repo, TINY_REV, [path], model_name="tiny")


def test_an_unreachable_hub_is_named_without_remote_entry_not_found_error(hub):
    hub.stop()
    with pytest.raises(ModelNotFoundError, match="could not be reached"):
        fetch_files(TINY_REPO, TINY_REV, ["config.json"], model_name="tiny")
