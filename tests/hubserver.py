"""A loopback server that answers ``hf_hub_download`` the way the Hugging Face hub does.

Serves fixture repos ``{repo_id: {revision: {path: bytes}}}`` from 127.0.0.1 on an ephemeral
port. What huggingface_hub (2.x) needs, read from its ``file_download.py``:

- ``HEAD /{repo}/resolve/{revision}/{path}`` answers with ``X-Repo-Commit`` (the commit the
  revision resolves to) and an etag. Small (non-LFS) files: ``ETag`` = git blob sha1,
  ``Content-Length``, status 200. LFS files (>= ``lfs_threshold`` bytes): a 302 to a "CDN" URL
  on another host name (``localhost``, so huggingface_hub does not follow it, as with the real
  CDN) with ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``. No ``X-Xet-Hash`` is ever sent,
  so huggingface_hub never tries Xet.
- ``GET`` of the resolve URL or the CDN URL returns the bytes; ``Range: bytes=N-`` gives a 206
  with ``Content-Range`` (huggingface_hub resumes with it after a cut connection).
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``),
  which huggingface_hub turns into its typed errors.

Switches: ``tamper`` (a set of ``(repo, path)``) serves altered bytes of the same length while
the headers still advertise the true etag; ``cut`` (``{(repo, path): n}``) closes the
connection halfway through the body for the next ``n`` GETs (-1: always); ``cut_after``
(``{(repo, path): bytes}``) makes such a cut come after that many bytes of the body instead.
``requests`` logs every request as ``(method, path, range header)``.

Fault switches: ``fail`` (``{(repo, path): (status, n)}``) answers the next ``n`` requests of
that file's resolve URL (HEAD or GET) with ``status`` and no ``X-Error-Code`` (-1: always);
``stall`` (a set of ``(repo, path)``, or ``ANY``) accepts those requests and never answers;
``hold`` (``{(repo, path): bytes}``) sends that many bytes of the body and then waits until
``release()`` (or ``stop()``). Stalled and held handlers all end at ``stop()``. ``moved``
(``{old_repo: new_repo}``) answers a renamed repo's resolve URLs with a relative 307, as the hub does.

``hub_env(monkeypatch, tmp_path, repos)`` starts a server and points huggingface_hub at it:
it sets ``HF_ENDPOINT`` and a temporary ``HF_HOME`` in the environment (edgeclip reads them at
call time) and, because huggingface_hub reads them only once at import, also patches
``huggingface_hub.constants``: ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE, HF_TOKEN_PATH (no real token is ever sent to the test server) and
HF_HUB_DISABLE_XET, plus AGENT_HARNESSES_PATH (see ``hub_env``).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

Repos = dict[str, dict[str, dict[str, bytes]]]
ANY = ("*", "*")  # in ``stall``: every request


def git_sha1(data: bytes) -> str:
    """The git blob sha1 the hub uses as the etag of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeHub:
    """The server; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(self, repos: Repos, *, lfs_threshold: int = 1024, branches=None):
        self.repos = repos
        self.lfs_threshold = lfs_threshold
        # branch name -> commit, per repo; default: "main" is the last revision listed
        self.branches = branches or {r: {"main": list(revs)[-1]} for r, revs in repos.items()}
        self.tamper: set[tuple[str, str]] = set()
        self.cut: dict[tuple[str, str], int] = {}
        self.cut_after: dict[tuple[str, str], int] = {}
        self.fail: dict[tuple[str, str], tuple[int, int]] = {}
        self.stall: set[tuple[str, str]] = set()
        self.hold: dict[tuple[str, str], int] = {}
        self.moved: dict[str, str] = {}
        self._released = threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """Let held (and stalled) handlers go on."""
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self, method: str, path: str, range_: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_))

    def take_cut(self, repo: str, path: str) -> bool:
        with self._lock:
            n = self.cut.get((repo, path), 0)
            if n == 0:
                return False
            if n > 0:
                self.cut[(repo, path)] = n - 1
            return True

    def take_fail(self, repo: str, path: str) -> int | None:
        with self._lock:
            status, n = self.fail.get((repo, path), (0, 0))
            if n == 0:
                return None
            if n > 0:
                self.fail[(repo, path)] = (status, n - 1)
            return status

    def wait_released(self) -> None:
        self._released.wait()

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def resolve(self, repo: str, revision: str) -> str | None:
        if revision in self.repos.get(repo, {}):
            return revision
        return self.branches.get(repo, {}).get(revision)

    def find_blob(self, digest: str) -> tuple[str, str, bytes] | None:
        for repo, revs in self.repos.items():
            for files in revs.values():
                for path, data in files.items():
                    if sha256(data) == digest:
                        return repo, path, data
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, code: int, error_code: str, commit: str | None = None) -> None:
        self.send_response(code)
        self.send_header("X-Error-Code", error_code)
        self.send_header("X-Error-Message", error_code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        fake = self.fake
        path = unquote(urlsplit(self.path).path)
        fake.log(self.command, path, self.headers.get("Range"))
        parts = path.strip("/").split("/")
        if ANY in fake.stall:
            return fake.wait_released()
        if len(parts) >= 2 and parts[0] == "cdn":  # /cdn/<sha256>
            found = fake.find_blob(parts[1])
            if found is None:
                return self._error(404, "EntryNotFound")
            repo, fpath, data = found
            return self._send_bytes(repo, fpath, data, body, extra={})
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, revision, fpath = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo in fake.moved:  # a renamed repo: the hub answers with a relative 307
            self.send_response(307)
            self.send_header("Location", "/" + "/".join([fake.moved[repo], *parts[2:]]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if (repo, fpath) in fake.stall:
            return fake.wait_released()
        status = fake.take_fail(repo, fpath)
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if repo not in fake.repos:
            return self._error(401, "RepoNotFound")
        commit = fake.resolve(repo, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound")
        data = fake.repos[repo][commit].get(fpath)
        if data is None:
            return self._error(404, "EntryNotFound", commit)
        extra = {"X-Repo-Commit": commit}
        if len(data) >= fake.lfs_threshold:
            digest = sha256(data)
            extra.update(
                {
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_sha1(data)}"',
                    "Location": f"http://localhost:{fake.port}/cdn/{digest}",
                }
            )
            self.send_response(302)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        extra["ETag"] = f'"{git_sha1(data)}"'
        return self._send_bytes(repo, fpath, data, body, extra)

    def _send_bytes(self, repo: str, fpath: str, data: bytes, body: bool, extra: dict) -> None:
        fake = self.fake
        if (repo, fpath) in fake.tamper and data:
            # same length, one byte changed: only a content hash can tell
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        chunk = data[start:]
        self.send_response(206 if start else 200)
        for k, v in extra.items():
            self.send_header(k, v)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        if (repo, fpath) in fake.hold:
            held = fake.hold[(repo, fpath)]
            with contextlib.suppress(OSError):  # the client may have gone meanwhile
                self.wfile.write(chunk[:held])
                self.wfile.flush()
                fake.wait_released()
                self.wfile.write(chunk[held:])
            return
        if fake.take_cut(repo, fpath):
            self.wfile.write(chunk[: fake.cut_after.get((repo, fpath), len(chunk) // 2)])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                import socket

                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)


@contextlib.contextmanager
def hub_env(monkeypatch, tmp_path: Path, repos: Repos, **kwargs) -> Iterator[FakeHub]:
    """Start a ``FakeHub`` and point huggingface_hub (env and constants) at it, with a tmp HF_HOME."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    with FakeHub(repos, **kwargs) as hub:
        for var in (
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_TOKEN",
        ):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        # huggingface_hub fetches an "agent harness" registry from the endpoint at most once a
        # day (cached in this file) when it builds request headers; seed an empty one so the
        # request log holds only file traffic and nothing is written to the real HF_HOME.
        registry = home / ".agent_harnesses.json"
        registry.parent.mkdir(parents=True, exist_ok=True)
        registry.write_text('{"standardEnvVars": [], "harnesses": {}}')
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(registry))
        yield hub


# A two-file repo at a pinned commit, as the hub tests use it: an LFS file and a plain git file.
TINY_REPO = "org/tiny-clip"
TINY_REV = "0123456789abcdef0123456789abcdef01234567"
TINY_BIG = random.Random(0).randbytes(300_000)  # served as an LFS file (>= 1 KiB)
TINY_SMALL = b'{"projection_dim": 8}'  # served as a plain git file
TINY_FILES = [
    {"path": "onnx/model.onnx", "sha256": sha256(TINY_BIG), "size": len(TINY_BIG)},
    {"path": "config.json"},
]


def tiny_hub_env(monkeypatch, tmp_path: Path) -> Iterator[FakeHub]:
    """``hub_env`` serving the tiny repo alone."""
    return hub_env(monkeypatch, tmp_path,
                   {TINY_REPO: {TINY_REV: {"onnx/model.onnx": TINY_BIG, "config.json": TINY_SMALL}}})  # fmt: skip
