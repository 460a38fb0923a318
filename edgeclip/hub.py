"""Fetch pinned files from the Hugging Face hub into the standard HF cache, verified.

Downloads go through ``huggingface_hub.hf_hub_download`` so a user's existing cache is reused
and the layout is the one every HF tool knows (``models--owner--name/blobs|snapshots``).

What this module adds on top:

- Settings are read from the environment at call time (``HF_ENDPOINT``, ``HF_HOME``,
  ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``): ``huggingface_hub.constants`` reads them only once, at
  import, so a variable set later would otherwise be ignored.
- With a 40-hex revision a cached file is returned without any request. A branch is asked
  for each time; if the hub gives no answer, the copy it last resolved to is used (a warning).
- Integrity: after a download the file's sha256 is checked against the zoo's pin, else against
  the hub's LFS etag (the sha256 of an LFS file), else against the git blob sha1 (the etag of
  a small, non-LFS file). A mismatch deletes the blob and its snapshot link and raises
  ``IntegrityError``. A verified file gets a small marker (``.edgeclip-verified/<blob>`` in the
  repo's cache folder: sha256, size, mtime) so it is hashed once, not on every load; its size
  and mtime are compared on every load (a changed file is re-hashed, a wrong size is refused).
- Failures are edgeclip errors that say what to do: offline with nothing cached, hub
  unreachable (a fast probe with a timeout instead of huggingface_hub's minute-long retries),
  unknown repo/revision/file, interrupted download, access refused (401/403: a token),
  rate-limited (429), a hub-side error (5xx), a hub that stops answering (``EDGECLIP_HUB_TIMEOUT``
  seconds, for the metadata requests and for every read of a download's body), a cache folder
  that is read-only or on a full disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import settings
from .errors import InputError, IntegrityError, ModelNotFoundError
from .hub_errors import (
    LOCAL_COPY,
    bad_token,
    cache_setting,
    check_endpoint,
    check_folder,
    http_status,
    offline_error,
    refused,
    unanswered,
)
from .hub_integrity import verify_cached

_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "true", "yes", "on"}
_DOWNLOAD_TIMEOUT_LOCK = threading.Lock()
MAX_HUB_TIMEOUT = 86400


def hub_timeout(value: float | str | None = None) -> float:
    """Seconds the hub may stay silent: ``value``, else ``EDGECLIP_HUB_TIMEOUT``; 0 < s <= a day."""
    name = "timeout" if value is not None else "EDGECLIP_HUB_TIMEOUT"
    raw = value if value is not None else settings.get("EDGECLIP_HUB_TIMEOUT")
    try:
        seconds = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not (0 < seconds <= MAX_HUB_TIMEOUT):  # above: an OverflowError deep in the socket wait
        raise InputError(
            f"{name}={raw!r} is not a number of seconds above 0 and at most {MAX_HUB_TIMEOUT} (a "
            "day): how long the Hugging Face hub may stay silent before a request is abandoned. "
            f"Set {name} to a number such as "
            f"{settings.SETTINGS['EDGECLIP_HUB_TIMEOUT'].default} (the default), or unset it."
        )
    return seconds


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF hub cache: ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(os.path.expandvars(env)).expanduser().resolve()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return (Path(os.path.expandvars(home)).expanduser() / "hub").resolve()


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def _endpoint() -> str:
    return check_endpoint(os.environ.get("HF_ENDPOINT"))


def _repo_folder(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def _normalise(files: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"path": spec} if isinstance(spec, str) else dict(spec) for spec in files]


def _net_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub uses (httpx2, httpx, requests)."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [OSError, HfHubHTTPError]
    for module, name in (
        ("httpx2", "HTTPError"),
        ("httpx", "HTTPError"),
        ("requests", "RequestException"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            errors.append(cls)
    return tuple(errors)


class _Ctx:
    """What every message about one fetch names: the model, repo@revision, the cache folder."""

    def __init__(self, repo: str, revision: str, cache: Path, model_name: str | None):
        self.repo, self.revision, self.cache = repo, revision, cache
        self.model = model_name or repo
        self.folder = _repo_folder(cache, repo)

    def where(self, path: str | None = None) -> str:
        return f"{self.repo}@{self.revision}" + (f"/{path}" if path else "")


def _verified(ctx: _Ctx, spec: dict[str, Any], pointer: Path, timeout: float, refetch: bool) -> Path:
    """``pointer`` once verified; a cached copy damaged since it was fetched (a disk error, a
    hand edit) is deleted and ``refetch``ed once, with a warning, instead of failing the load."""
    try:
        verify_cached(ctx, spec, pointer)
        return pointer
    except IntegrityError as exc:
        if not refetch or os.path.lexists(pointer):  # offline, fresh, or it could not be deleted
            raise
        damaged = exc
    try:
        pointer = _download(ctx, spec["path"], timeout)
    except ModelNotFoundError as exc:
        raise damaged from exc
    why = str(damaged).split(". ")[0].split(": ", 1)[-1]
    warnings.warn(f"{ctx.model}: the cached copy was damaged since it was fetched ({why}); it was "
                  "downloaded again.", RuntimeWarning, stacklevel=4)  # fmt: skip
    verify_cached(ctx, spec, pointer)
    return pointer


def _not_found_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    # huggingface_hub < 1.0 (what transformers 4 needs) has no RemoteEntryNotFoundError
    entry = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    return (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, entry)


def _not_found(ctx: _Ctx, path: str, exc: BaseException) -> ModelNotFoundError:
    if type(exc).__name__ == "LocalEntryNotFoundError":  # < 1.0: no answer, nothing cached
        why = f"the hub at {_endpoint()} could not be reached ({type(exc).__name__}: {exc})"
        return offline_error(ctx, [path], why)
    token = ""
    if http_status(exc) in (401, 403):  # the hub's answer to a private or gated repo, too
        token = (" If the repository is private or gated, it needs a token: run `hf auth "
                 "login` or set HF_TOKEN (and accept the model's terms on its hub page).")  # fmt: skip
    return ModelNotFoundError(
        f"model {ctx.model!r}: the hub at {_endpoint()} has no {ctx.where(path)} "
        f"({type(exc).__name__}). Check the zoo entry's repo, revision and file names, or "
        f"{LOCAL_COPY}.{token}"
    )


def _probe(ctx: _Ctx, path: str, timeout: float) -> None:
    """One HEAD with a timeout and no retries, so an unreachable hub fails in seconds, clearly."""
    _endpoint()  # a malformed HF_ENDPOINT is refused before huggingface_hub reads it
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(ctx.repo, path, revision=ctx.revision, endpoint=_endpoint())
    try:
        get_hf_file_metadata(url, timeout=timeout, endpoint=_endpoint())
    except _not_found_errors() as exc:
        raise _not_found(ctx, path, exc) from exc
    except UnicodeEncodeError as exc:
        if (answer := bad_token(ctx.model, exc)) is None:
            raise
        raise answer from exc
    except _net_errors() as exc:
        answer = refused(ctx, path, exc, timeout, _endpoint())
        if answer is not None:
            raise answer from exc
        why = f"the hub at {_endpoint()} could not be reached ({type(exc).__name__}: {exc})"
        raise offline_error(ctx, [path], why) from exc


def _cached_pointer(ctx: _Ctx, path: str, use_refs: bool) -> Path | None:
    """The cached snapshot file for ``path``, found without any request (None if not cached).

    A branch name is looked up in ``refs/<branch>`` only when ``use_refs`` (offline): online, an
    unpinned revision is always re-resolved by the hub. Resolving the cache ourselves, rather
    than through ``hf_hub_download(local_files_only=True)``, keeps offline loads free of the
    telemetry request huggingface_hub may make when it builds its headers.
    """
    commit = ctx.revision
    if not _COMMIT.fullmatch(commit):
        if not use_refs:
            return None
        try:
            commit = (ctx.folder / "refs" / commit).read_text().strip()
        except OSError:
            return None
    pointer = ctx.folder / "snapshots" / commit / Path(*path.split("/"))
    return pointer if pointer.exists() else None


def fetch_files(
    repo: str,
    revision: str | None,
    files: Iterable[dict[str, Any] | str],
    *,
    cache_dir: str | os.PathLike | None = None,
    model_name: str | None = None,
    timeout: float | None = None,
) -> dict[str, Path]:
    """Download (or find in the HF cache) ``files`` of ``repo`` at ``revision``; verify them.

    ``files`` items are paths or dicts ``{"path", "sha256"?, "size"?}`` (zoo file specs).
    Returns ``{path: local Path}`` (snapshot paths inside the HF cache). ``revision`` should be
    a 40-hex commit: a cached file then costs no request. ``None`` means the main branch.
    ``timeout``: seconds the hub may stay silent (default ``EDGECLIP_HUB_TIMEOUT``).
    """
    ctx = _Ctx(repo, revision or "main", hub_cache_dir(cache_dir), model_name)
    specs = _normalise(files)
    timeout = hub_timeout(timeout)
    check_folder(ctx.cache, cache_setting(cache_dir))
    offline, pinned, probed = is_offline(), bool(_COMMIT.fullmatch(ctx.revision)), False
    result: dict[str, Path] = {}
    missing: list[str] = []
    for spec in specs:
        path = spec["path"]
        pointer = _cached_pointer(ctx, path, pinned or offline)
        if pointer is None and offline:
            missing.append(path)
            continue
        if pointer is None:
            if not probed:
                try:
                    _probe(ctx, path, timeout)
                except ModelNotFoundError as exc:
                    if pinned or not unanswered(exc):
                        raise
                    return _cached_at_ref(ctx, specs, exc)
                probed = True
            fresh, pointer = True, _download(ctx, path, timeout)
        else:
            fresh = False
        result[path] = _verified(ctx, spec, pointer, timeout, refetch=not (fresh or offline))
    if missing:
        raise offline_error(ctx, missing, "HF_HUB_OFFLINE is set, so nothing may be downloaded")
    return result


def _cached_at_ref(ctx: _Ctx, specs: list[dict[str, Any]], exc: ModelNotFoundError) -> dict:
    """An unpinned revision, a hub that gave no answer: the files the branch pointed at when last
    fetched (huggingface_hub does the same), not no model at all; else ``exc`` is raised."""
    found = {spec["path"]: _cached_pointer(ctx, spec["path"], use_refs=True) for spec in specs}
    if None in found.values():
        raise exc
    commit = (ctx.folder / "refs" / ctx.revision).read_text().strip()
    status = http_status(exc)
    warnings.warn(
        f"model {ctx.model!r}: the hub at {_endpoint()} gave no answer for {ctx.where()} "
        f"({f'HTTP {status}' if status else type(exc.__cause__).__name__}); using the copy cached "
        f"at commit {commit}, which may be older than {ctx.revision} is now.",
        RuntimeWarning,
        stacklevel=3,
    )
    for spec in specs:
        verify_cached(ctx, spec, found[spec["path"]])
    return found


@contextlib.contextmanager
def _download_timeout(seconds: float):
    """Make huggingface_hub wait ``seconds`` for each read of a download's body.

    It takes that wait from a module constant set once at import (``HF_HUB_DOWNLOAD_TIMEOUT``,
    10 s) and has no argument for it, so the constant is set for this download and restored
    after; the lock keeps concurrent downloads in this process from restoring it under another.
    """
    from huggingface_hub import constants

    with _DOWNLOAD_TIMEOUT_LOCK:
        before = constants.HF_HUB_DOWNLOAD_TIMEOUT
        constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds  # type: ignore[assignment]
        try:
            yield
        finally:
            constants.HF_HUB_DOWNLOAD_TIMEOUT = before


def _download(ctx: _Ctx, path: str, timeout: float) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        with _download_timeout(timeout):
            return Path(
                hf_hub_download(
                    ctx.repo,
                    path,
                    revision=ctx.revision,
                    cache_dir=ctx.cache,
                    endpoint=_endpoint(),
                    etag_timeout=timeout,
                )
            )
    except _not_found_errors() as exc:
        raise _not_found(ctx, path, exc) from exc
    except UnicodeEncodeError as exc:
        if (answer := bad_token(ctx.model, exc)) is None:
            raise
        raise answer from exc
    except _net_errors() as exc:
        answer = refused(ctx, path, exc, timeout, _endpoint())
        if answer is not None:
            raise answer from exc
        # huggingface_hub downloads to a process-unique temporary file and deletes it on
        # failure, so an interrupted download never becomes a cached blob.
        raise ModelNotFoundError(
            f"model {ctx.model!r}: downloading {ctx.where(path)} from {_endpoint()} failed "
            f"({type(exc).__name__}: {exc}). The partial download is never used; try again, "
            f"or {LOCAL_COPY}."
        ) from exc


__all__ = ["fetch_files", "hub_cache_dir", "hub_timeout", "is_offline"]
