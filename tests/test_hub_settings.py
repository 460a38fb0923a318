"""Odd values of the settings a download reads (HF_ENDPOINT, the access token, the cache
folders), against the loopback hub (tests/hubserver.py): each is refused by name with its fix,
before any request, and none of them gets in the way of files already cached."""

from __future__ import annotations

import pytest
from hubserver import TINY_BIG, TINY_FILES, TINY_REPO, TINY_REV, tiny_hub_env

from edgeclip.errors import InputError
from edgeclip.hub import fetch_files


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with tiny_hub_env(monkeypatch, tmp_path) as server:
        yield server


def _fetch():
    return fetch_files(TINY_REPO, TINY_REV, TINY_FILES, model_name="tiny")


@pytest.mark.parametrize(
    "tail, says",
    [
        (" ", "has a space or line break"),  # pasted from a .env file: a bare ValueError before
        ("\n", "has a space or line break"),
        ("no-scheme", "is not an http:// or https:// URL"),  # read as "could not be reached"
        ("ftp", "is not an http:// or https:// URL"),
        ("port", "has a port that is not a number"),
    ],
)
def test_a_malformed_hf_endpoint_is_named_before_any_request(hub, monkeypatch, tail, says):
    value = {
        "no-scheme": hub.url.removeprefix("http://"),
        "ftp": hub.url.replace("http://", "ftp://"),
        "port": hub.url + "x",
    }.get(tail, hub.url + tail)
    monkeypatch.setenv("HF_ENDPOINT", value)
    with pytest.raises(InputError) as err:
        _fetch()
    msg = str(err.value)
    assert f"HF_ENDPOINT={value!r}" in msg and says in msg and "https://huggingface.co" in msg
    assert hub.requests == []


def test_a_malformed_hf_endpoint_does_not_stop_cached_files(hub, monkeypatch):
    paths = _fetch()
    hub.clear_log()
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    assert _fetch() == paths  # pinned and cached: no request, so the endpoint is never read
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _fetch()["onnx/model.onnx"].read_bytes() == TINY_BIG
    assert hub.requests == []


def test_a_trailing_slash_on_hf_endpoint_is_fine(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url + "/")
    assert _fetch()["onnx/model.onnx"].read_bytes() == TINY_BIG


def test_a_token_with_a_pasted_curly_quote_is_named_not_a_unicode_traceback(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef\u201d")
    with pytest.raises(InputError) as err:
        _fetch()
    msg = str(err.value)
    assert "'tiny'" in msg and "HF_TOKEN" in msg and "'\u201d'" in msg
    assert "hf_abcdef" not in msg  # the secret itself is never echoed


def test_a_bad_token_in_the_token_file_names_the_file(hub, tmp_path):
    token_file = tmp_path / "hf_home" / "token"  # where hub_env points huggingface_hub
    token_file.write_text("hf_äbc\n")
    with pytest.raises(InputError) as err:
        _fetch()
    msg = str(err.value)
    assert str(token_file) in msg and "hf auth login" in msg and "HF_TOKEN" not in msg


def test_a_clean_token_with_a_newline_still_downloads(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abc\n")  # huggingface_hub strips it; so must we not break
    assert _fetch()["onnx/model.onnx"].read_bytes() == TINY_BIG


@pytest.mark.parametrize("var", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_cache_that_is_a_file_is_named_with_the_setting(hub, monkeypatch, tmp_path, var):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    # HF_HUB_CACHE=file gave "downloading failed ... try again"; HF_HOME under a file gave
    # "the hub could not be reached" (its token file could not be read)
    monkeypatch.setenv(var, str(a_file if var == "HF_HUB_CACHE" else a_file / "sub"))
    with pytest.raises(InputError) as err:
        _fetch()
    msg = str(err.value)
    assert f"Set {var} to a folder" in msg and f"{a_file} is a file" in msg
    assert hub.requests == []


@pytest.mark.parametrize("value", ["1e12", "1e308", "86401"])
def test_a_timeout_too_long_to_wait_is_refused_not_an_overflow(hub, monkeypatch, value):
    monkeypatch.setenv("EDGECLIP_HUB_TIMEOUT", value)  # before: OverflowError (time_t) traceback
    with pytest.raises(InputError) as err:
        _fetch()
    assert f"EDGECLIP_HUB_TIMEOUT={value!r}" in str(err.value) and "86400" in str(err.value)
    assert hub.requests == []


def test_the_longest_timeout_allowed_downloads(hub, monkeypatch):
    monkeypatch.setenv("EDGECLIP_HUB_TIMEOUT", "86400")
    assert _fetch()["onnx/model.onnx"].read_bytes() == TINY_BIG
