"""Why a hub download failed, as one message with its fix: an HTTP status (401/403, 429,
5xx), a hub that went silent, or a cache folder without permission or space. ``hub.py`` asks;
this module reads the exception chain huggingface_hub raised and words the answer."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


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
    local = "or load a local directory with edgeclip.load('/path/to/dir')."
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
