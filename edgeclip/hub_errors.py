"""Why a hub download failed, as one message with its fix: an HTTP status (401/403, 429,
5xx), a hub that went silent, or a cache folder without permission or space. ``hub.py`` asks;
this module reads the exception chain huggingface_hub raised and words the answer."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import InputError, ModelNotFoundError

NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


#: the way round the hub that every download error offers, for the API and the commands alike
LOCAL_COPY = ("give a local bundle or checkpoint directory in place of the model name "
              "(edgeclip.load('/path/to/dir'), or that path on the command line)")


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (huggingface_hub wraps transport errors)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def http_status(exc: BaseException) -> int | None:
    for cause in causes(exc):
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def is_timeout(exc: BaseException) -> bool:
    return any(
        isinstance(c, TimeoutError) or type(c).__name__.endswith("Timeout") for c in causes(exc)
    )


def fs_errno(exc: BaseException) -> int | None:
    """The errno of a cache write that failed for want of permission or space, else None."""
    for cause in causes(exc):
        if isinstance(cause, OSError) and cause.errno in NOT_WRITABLE | DISK_FULL:
            return cause.errno
    return None


def refused(ctx: Any, path: str, exc: BaseException, timeout: float, hub: str) -> ModelNotFoundError | None:
    """The error for a hub that answered with an error status, went silent, or a cache that
    cannot be written; None for anything else."""
    where, code = ctx.where(path), http_status(exc)
    local = "or " + LOCAL_COPY + "."
    if (err := fs_errno(exc)) is not None:
        return ModelNotFoundError(cache_write_message(ctx.model, where, ctx.cache, err, exc))
    if code in (401, 403):
        why = (f"the hub at {hub} refused access to {where} (HTTP {code}). A private or gated "
               "repository needs a token: run `hf auth login` or set HF_TOKEN (and accept the "
               "model's terms on its hub page), then try again; ")  # fmt: skip
    elif code == 429:
        why = (f"the hub at {hub} is rate-limiting this machine (HTTP 429) for {where}. Wait a "
               "few minutes and try again (a token, HF_TOKEN, raises the limit); ")  # fmt: skip
    elif code is not None and code >= 500:
        why = (f"the hub at {hub} failed with HTTP {code} for {where}: an error on the hub's "
               "side (or HF_ENDPOINT's). Try again later; ")  # fmt: skip
    elif code is None and is_timeout(exc):
        why = (f"the hub at {hub} did not answer within {timeout:g} s for {where}. Check the "
               "network and HF_ENDPOINT, or set EDGECLIP_HUB_TIMEOUT to wait longer (seconds), "
               "then try again; nothing partial was kept; ")  # fmt: skip
    else:
        return None
    return ModelNotFoundError(f"model {ctx.model!r}: {why}{local}")


def cache_write_message(model: str, what: str, folder: Path, err: int, exc: BaseException) -> str:
    """Why ``folder`` could not take ``what`` (no permission, or no space), and the fix."""
    detail = f"{type(exc).__name__}: {exc}"
    if err in DISK_FULL:
        return (
            f"model {model!r}: no room to write {what} under {folder}: the disk is full (or a "
            f"size limit was reached) ({detail}). Free space there, or point the cache at another "
            "disk (HF_HUB_CACHE / HF_HOME for downloads, EDGECLIP_CACHE for built bundles), then "
            "try again; nothing partial was kept and files already complete are reused."
        )
    return (
        f"model {model!r}: cannot write {what} under {folder}: the folder is not writable "
        f"({detail}). Make it writable, or set HF_HUB_CACHE / HF_HOME (downloads) or "
        "EDGECLIP_CACHE (built bundles) to a writable folder, then try again."
    )


DEFAULT_ENDPOINT = "https://huggingface.co"


def check_endpoint(raw: str | None) -> str:
    """``HF_ENDPOINT`` (unset or empty: the public hub) without a trailing slash; ``InputError``
    naming it when it is no http(s) URL. huggingface_hub would raise a bare ValueError at import
    for a stray space, and a missing scheme read as an unreachable hub."""
    if not raw:
        return DEFAULT_ENDPOINT
    parts = urlsplit(raw.rstrip("/"))
    if any(c.isspace() for c in raw):
        problem = "has a space or line break in it"
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "is not an http:// or https:// URL with a host name"
    else:
        try:
            parts.port  # noqa: B018 - only to see whether it parses
            problem = None
        except ValueError:
            problem = "has a port that is not a number"
    if problem is not None:
        raise InputError(
            f"HF_ENDPOINT={raw!r} {problem}: it is the address of the Hugging Face hub or of a "
            f"mirror. Set it to a URL such as {DEFAULT_ENDPOINT} (the default) or "
            "http://mirror.example:8080, or unset it."
        )
    return raw.rstrip("/")


def bad_token(model: str, exc: UnicodeEncodeError) -> InputError | None:
    """The error for an access token that cannot go into an HTTP header; None if ``exc`` is
    about another header."""
    if "authorization" not in str(exc).lower():
        return None
    var = next((v for v in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if os.environ.get(v)), None)
    if var is None:
        from huggingface_hub import constants

        source = f"the token file {constants.HF_TOKEN_PATH} (written by `hf auth login`)"
    else:
        source = var
    bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else "?"  # not the token
    return InputError(
        f"model {model!r}: the Hugging Face access token in {source} has characters an HTTP "
        f"header cannot carry (only ASCII can, not {bad!r}), often a quote pasted with it. "
        f"{f'Set {var} to' if var else 'Run `hf auth login` again with'} the token exactly as "
        "the hub shows it (hf_...), or remove it: public models need no token."
    )


def check_folder(folder: Path, setting: str) -> None:
    """``InputError`` naming ``setting`` when ``folder``, or the nearest thing above it that
    exists, is a file: no cache can be made there (permission and space are found on write)."""
    near = folder
    while not near.exists() and near != near.parent:
        near = near.parent
    if near.exists() and not near.is_dir():
        where = "is a file" if near == folder else f"cannot be made: {near} is a file"
        raise InputError(
            f"the cache folder {folder} {where}. Set {setting} to a folder (or unset it for "
            "the default), then try again."
        )


def cache_setting(cache_dir: object) -> str:
    """The setting that chose the hub cache (``hub.hub_cache_dir``'s order), for messages."""
    if cache_dir is not None:
        return "cache_dir"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(var):
            return var
    return "HF_HUB_CACHE"


def unanswered(exc: BaseException) -> bool:
    """True for a fetch that failed because the hub gave no usable answer (unreachable, silent,
    rate-limiting, failing on its side) rather than one saying no (404, 401/403)."""
    status = http_status(exc)
    return status is None or status == 429 or status >= 500


def offline_error(ctx: Any, missing: list[str], reason: str) -> ModelNotFoundError:
    """Files not in the cache and not to be had from the hub now, with the ways to get them."""
    pinned = len(ctx.revision) == 40  # a branch lives in refs/<branch>, not snapshots/<branch>
    snap = ctx.folder / "snapshots" / (ctx.revision if pinned else "")
    return ModelNotFoundError(
        f"model {ctx.model!r}: {', '.join(missing)} of {ctx.where()} not found in the Hugging Face "
        f"cache ({snap}) and {reason}. Supply the files in one of these ways: "
        f"(1) {LOCAL_COPY}; (2) copy a cache that has them into {ctx.cache} (for example from "
        f"a machine with network: `hf download {ctx.repo} --revision {ctx.revision}`), or set "
        "HF_HOME / HF_HUB_CACHE to where they are; (3) unset HF_HUB_OFFLINE and connect to the "
        "network once: the files are then cached and later loads need no network."
    )
