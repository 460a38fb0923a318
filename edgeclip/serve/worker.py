"""Where the model runs: in a worker subprocess (the default) or in the server process.

The server talks to both the same way, ``runner.call(op, args)``, from one model thread:

* ``"image"``: encoded images (bytes) -> (float32 (N, D) with NaN rows, {index: reason})
* ``"text"``: strings -> (float32 (N, D), token counts)
* ``"labels"``: (labels, templates) -> float32 (L, D), cached by ``EdgeClip.label_embeddings``

A runner opens only the towers it is asked for and the rest on first use, and says which are
open (``runner.towers``): a server that only answers search queries never opens the image tower.

A worker subprocess gives all of the model's memory back when it exits: ONNX Runtime and
OpenVINO keep their arenas and thread pools for the life of a process, so an in-process unload
returns only part of it (measured in docs/serve.md). It also keeps a crash in a native runtime
from taking the server down. The price is a process start (about a second) on each load.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeclip.errors import BatchError, EdgeclipError, InputError

log = logging.getLogger("edgeclip.serve")


@dataclass(frozen=True)
class ModelSpec:
    """What to load, as the ``edgeclip.load`` arguments plus the server's pixel limit."""

    model: str
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_pixels: int = 40_000_000
    batch_size: int = 32
    device: str = "auto"
    verify: bool = True


class ModelInputError(Exception):
    """The model refused an input (``edgeclip.errors.InputError``): the client's fault, 400.

    ``param`` names the request field when the worker knows it (``labels[2]``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class WorkerFailed(Exception):
    """The model could not be loaded, or its worker died; the next request loads it again."""


#: what each operation runs on, so the host knows which tower a request needs
TOWER_OF_OP = {"image": "image", "text": "text", "labels": "text"}
BOTH_TOWERS = ("image", "text")


def open_model(spec: ModelSpec, towers: tuple[str, ...] = BOTH_TOWERS) -> Any:
    import edgeclip

    # ONNX Runtime's threads stop spinning when each run ends (EDGECLIP_ORT_SPINNING=run): with
    # gaps between batches, spinning that went on after runs burned 40 % more CPU.
    model = edgeclip.load(
        spec.model, backend=spec.backend, precision=spec.precision, threads=spec.threads,
        batch_size=spec.batch_size, device=spec.device, verify=spec.verify,
    )  # fmt: skip
    # The server's bomb limit; the request handler already refused larger headers.
    model.preprocessor.max_pixels = spec.max_pixels
    model.warm(image="image" in towers, text="text" in towers)
    return model


def describe(model: Any) -> dict[str, Any]:
    return {
        "name": model.bundle.name,
        "variant": model.variant.id,
        "backend": model.variant.backend,
        "precision": model.variant.precision,
        "embed_dim": int(model.embed_dim) if model.embed_dim else None,
        "logit_scale": float(model.logit_scale),
        "batch_invariant": bool(model.batch_invariant),
        "fingerprint": model.fingerprint,
        "context_length": int(model.tokenizer.context_length),
    }


def _encode_images(model: Any, items: list[bytes]) -> tuple[np.ndarray, dict[int, str]]:
    try:
        return model.encode_image(items, invariant=True), {}
    except BatchError as exc:
        out = exc.results
        if out is None:  # every image failed
            out = np.full((len(items), model.embed_dim or 1), np.nan, np.float32)
        return out, dict(exc.failures)


def _token_counts(model: Any, texts: list[str]) -> list[int]:
    """Tokens of each text, start and end included (2: nothing left once cleaned)."""
    ids = model.tokenizer(texts)
    eot = ids.shape[1] - 1 - np.argmax(ids[:, ::-1] != 0, axis=1)  # last non-pad position
    return [int(n) + 1 for n in eot]


def _encode_texts(model: Any, texts: list[str]) -> tuple[np.ndarray, list[int]]:
    """Vectors (NaN for a text with no tokens, which the service names) and token counts."""
    try:
        out = model.encode_text(texts, invariant=True)
    except BatchError as exc:
        out = exc.results
        if out is None:  # every text was empty
            out = np.full((len(texts), model.embed_dim or 1), np.nan, np.float32)
    return out, _token_counts(model, texts)


def run_op(model: Any, op: str, args: Any) -> Any:
    """One operation on a loaded ``EdgeClip``; ``InputError`` becomes ``ModelInputError``."""
    try:
        if op == "image":
            return _encode_images(model, args)
        if op == "text":
            return _encode_texts(model, args)
        if op == "labels":
            return model.label_embeddings(*args)
        if op == "describe":
            return describe(model)
    except InputError as exc:
        raise ModelInputError(str(exc), param=exc.param) from exc
    raise ValueError(f"unknown model operation {op!r}")


def release_memory() -> None:
    """Collect garbage and ask glibc to return freed heap pages to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# -- the subprocess --------------------------------------------------------------------------


def worker_main(conn: Any, spec: ModelSpec, towers: tuple[str, ...] = BOTH_TOWERS) -> None:
    """Entry point of the worker process: load, then answer ``(op, args)`` until told to stop.

    Every reply is ``(kind, payload, towers open)``."""
    # Ctrl-C and SIGTERM go to the server, which finishes its requests and then stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = open_model(spec, towers)
        conn.send(("ready", describe(model), model.towers_open))
    except Exception as exc:  # reported to the server, which answers 500 with the reason
        conn.send(("error", _reason(exc), ()))
        return
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if op == "stop":
            return
        try:
            reply: tuple[str, Any] = ("ok", run_op(model, op, args))
        except ModelInputError as exc:
            reply = ("input_error", (str(exc), exc.param))
        except Exception as exc:
            reply = ("error", _reason(exc))
        conn.send((*reply, model.towers_open))


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EdgeclipError) else f"{type(exc).__name__}: {exc}"


class SubprocessRunner:
    """The model in a spawned worker process; ``stop`` ends the process and its memory."""

    in_process = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._proc: Any = None
        self._conn: Any = None
        self.towers: tuple[str, ...] = ()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self, towers: tuple[str, ...] = BOTH_TOWERS) -> dict[str, Any]:
        # spawn, not fork: the server has threads, and a forked runtime can deadlock.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=worker_main, args=(child, self.spec, towers), name="edgeclip-model",
            daemon=True,
        )  # fmt: skip
        self._proc.start()
        child.close()
        kind, payload = self._recv("loading the model")
        if kind != "ready":
            self.stop()
            raise WorkerFailed(f"the model failed to load: {payload}")
        return payload

    def _lost(self, doing: str) -> WorkerFailed:
        """Forget a worker that died; the error to raise names its exit code."""
        proc, self._proc = self._proc, None
        self.towers = ()
        proc.join(timeout=5)
        self._conn.close()
        return WorkerFailed(
            f"the model worker exited (code {proc.exitcode}) while {doing}; it is restarted "
            "on the next request."
        )

    def _recv(self, doing: str) -> tuple[str, Any]:
        try:
            kind, payload, self.towers = self._conn.recv()
        except (EOFError, OSError):
            raise self._lost(doing) from None
        return kind, payload

    def call(self, op: str, args: Any) -> Any:
        try:
            self._conn.send((op, args))
        except OSError:
            raise self._lost(f"receiving {op!r}") from None
        kind, payload = self._recv(f"running {op!r}")
        if kind == "ok":
            return payload
        if kind == "input_error":
            raise ModelInputError(*payload)
        raise RuntimeError(payload)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self.towers = ()
        if proc is None:
            return
        try:
            self._conn.send(("stop", None))
        except OSError:
            pass
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        self._conn.close()


class InProcessRunner:
    """The model in the server process (``--in-process``): no process start, no isolation."""

    in_process = True

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._model: Any = None
        self.pid = None

    @property
    def towers(self) -> tuple[str, ...]:
        return self._model.towers_open if self._model is not None else ()

    def start(self, towers: tuple[str, ...] = BOTH_TOWERS) -> dict[str, Any]:
        try:
            self._model = open_model(self.spec, towers)
        except Exception as exc:
            raise WorkerFailed(f"the model failed to load: {_reason(exc)}") from exc
        return describe(self._model)

    def alive(self) -> bool:
        return self._model is not None

    def call(self, op: str, args: Any) -> Any:
        return run_op(self._model, op, args)

    def stop(self) -> None:
        self._model = None
        release_memory()
