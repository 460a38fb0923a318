"""``edgeclip serve MODEL``: parse the flags, refuse unsafe setups, run uvicorn.

Reached through ``edgeclip serve ...`` (``edgeclip.cli`` forwards the arguments here).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from .hostguard import is_loopback
from .limits import Limits

DEFAULT_PORT = 7997  # infinity's, so clients set up for it need only the host changed


# (flag, Limits field, type, help): every limit is a flag, and docs/serve.md lists them all
LIMIT_FLAGS = (
    ("--max-body-bytes", "max_body_bytes", int, "bytes of a request body"),
    ("--body-timeout", "body_timeout_s", float, "seconds a client gets to send its body"),
    ("--max-images", "max_images", int, "images per request"),
    ("--max-texts", "max_texts", int, "texts per request"),
    ("--max-text-chars", "max_text_chars", int, "characters per text"),
    ("--max-pixels", "max_pixels", int, "width x height of an image"),
    ("--max-labels", "max_labels", int, "labels per classify request"),
    ("--max-prompts", "max_prompts", int, "labels x templates per classify request"),
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", default="tinyclip-8m", help="zoo name, bundle or checkpoint dir"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--backend", "-b", default="auto", help="auto, onnx, openvino, litert")
    p.add_argument("--precision", "-p", default="auto", help="auto, fp32, fp16, int8, ...")
    p.add_argument("--threads", "-t", type=int, default=None, help="intra-op threads of the model")
    p.add_argument("--device", "-d", default="auto",
                   help="auto, cpu, cuda, tensorrt (ONNX Runtime), gpu, npu (OpenVINO)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 and on-device accuracy checks (you know the variant)")  # fmt: skip
    p.add_argument("--alias", action="append", default=[], metavar="NAME",
                   help="another model name requests may use (repeatable), e.g. ViT-B-32__openai for Immich")  # fmt: skip
    p.add_argument("--index", default=None, nargs="?", const=True, metavar="DB",
                   help="serve photo search over this index (built by `edgeclip index DIR --db "
                   "DB`): /v1/search, /v1/photos/ID and the page at /photos; without DB, the "
                   "one `edgeclip index` uses without --db")  # fmt: skip


def _add_security_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    g.add_argument(
        "--api-key-file", default=None, help="read the key from a file (keeps it out of ps)"
    )
    g.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without a key"
    )
    g.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="images may be given as paths of files under DIR (repeatable)")  # fmt: skip
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000; '*': any) call "
                   "the API from a browser (repeatable; default: none)")  # fmt: skip
    g.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="on a loopback --host, answer requests whose Host header is NAME too "
                   "(repeatable; default: loopback names only, against DNS rebinding)")  # fmt: skip


def _add_lifecycle_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model lifecycle and batching")
    g.add_argument(
        "--preload", action="store_true", help="load the model at start, not on first use"
    )
    g.add_argument("--idle-ttl", type=float, default=300.0,
                   help="unload the model after this many idle seconds (0: never; default 300)")  # fmt: skip
    g.add_argument("--image-idle-ttl", type=float, default=0.0, metavar="S",
                   help="unload the image tower alone after S seconds without image requests, "
                   "keeping the text tower loaded for searches (0: only with the model)")  # fmt: skip
    g.add_argument("--in-process", action="store_true",
                   help="run the model in the server process, not in a worker subprocess")  # fmt: skip
    g.add_argument("--max-batch", type=int, default=32, help="inputs per model call")
    g.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long a batch waits for requests still being parsed (ms)")  # fmt: skip
    g.add_argument(
        "--max-queue", type=int, default=256, help="queued inputs per modality before 429"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeclip serve",
        description="Serve a CLIP model over HTTP: OpenAI-style /v1/embeddings, /v1/classify, "
        "Immich's /predict, a web page at /, /metrics, photo search with --index. See "
        "docs/serve.md.",
    )
    _add_model_args(p)
    _add_security_args(p)
    _add_lifecycle_args(p)
    defaults = Limits()
    g = p.add_argument_group("limits (docs/serve.md)")
    for flag, field, kind, help_ in LIMIT_FLAGS:
        default = getattr(defaults, field)
        g.add_argument(flag, dest=field, type=kind, default=default, help=f"{help_} [{default:,}]")
    g = p.add_argument_group("HTTP server")
    g.add_argument("--max-connections", type=int, default=128, help="requests in flight before a JSON 503 with Retry-After")
    g.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM or Ctrl-C waits for requests in flight (0: none)")  # fmt: skip
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key and args.api_key_file:
        raise SystemExit("edgeclip serve: give --api-key or --api-key-file, not both.")
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"edgeclip serve: cannot read --api-key-file: {exc}") from None
        if not key:
            raise SystemExit(f"edgeclip serve: {args.api_key_file} is empty.")
        return key
    return args.api_key or None


def _allow_dirs(values: list[str]) -> tuple[Path, ...]:
    dirs = []
    for value in values:
        real = Path(os.path.realpath(Path(value).expanduser()))
        if not real.is_dir():
            raise SystemExit(f"edgeclip serve: --allow-dir {value} is not a directory.")
        dirs.append(real)
    return tuple(dirs)


def _cors_origins(values: list[str]) -> tuple[str, ...]:
    from .cors import parse_origins

    try:
        return parse_origins(values)
    except ValueError as exc:
        raise SystemExit(f"edgeclip serve: {exc}") from None


def served_names(model: str, aliases: list[str]) -> tuple[str, ...]:
    """The names requests may use; an unknown zoo name fails here, with close matches."""
    from edgeclip.bundle import Bundle

    path = Path(model).expanduser()
    names = [model]
    if Bundle.is_bundle(path):
        names.insert(0, Bundle.open(path, verify=False).name)  # answer with the bundle's name
    elif not path.exists():
        from edgeclip.zoo import resolve_name

        names.insert(0, resolve_name(model))  # raises ModelNotFoundError with suggestions
    return tuple(dict.fromkeys(names + aliases))


def _photo_index(value: str | bool | None) -> Path | None:
    """The ``--index`` file (``True``: ``--index`` alone, the default index), refused at start
    (one line, exit 2) if it is not an index."""
    if value is None:
        return None
    if value is True:
        from edgeclip.paths import default_index

        value = str(default_index())
    try:
        from .photos import check_index
    except ImportError as exc:  # starlette: the serve extra
        raise SystemExit(f"edgeclip serve needs the serve extra: pip install 'edgeclip[serve]' "
                         f"({exc})") from None  # fmt: skip
    return check_index(value)


def _check_positive(args: argparse.Namespace) -> None:
    for flag in ("max_body_bytes", "max_images", "max_texts", "max_text_chars", "max_pixels",
                 "max_labels", "max_prompts", "max_batch", "max_queue", "max_connections"):  # fmt: skip
        if getattr(args, flag) < 1:
            raise SystemExit(f"edgeclip serve: --{flag.replace('_', '-')} must be at least 1.")
    # (flag, field, whether 0 is allowed): durations in seconds, --batch-window-ms in ms
    durations = (("--body-timeout", "body_timeout_s", False), ("--idle-ttl", "idle_ttl", True),
                 ("--image-idle-ttl", "image_idle_ttl", True),
                 ("--batch-window-ms", "batch_window_ms", True),
                 ("--shutdown-timeout", "shutdown_timeout", True))  # fmt: skip
    for flag, field, zero_ok in durations:
        value = getattr(args, field)
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            never = " (0 means never)" if "idle" in flag else ""
            raise SystemExit(f"edgeclip serve: {flag} must be a finite number {bound}{never}, "
                             f"got {value}.")  # fmt: skip


def build_config(args: argparse.Namespace):  # -> ServeConfig (imported late: no numpy at --help)
    from .service import ServeConfig
    from .worker import ModelSpec

    _check_positive(args)
    api_key = _api_key(args)
    if not is_loopback(args.host) and api_key is None and not args.insecure:
        raise SystemExit(
            f"edgeclip serve: refusing to listen on {args.host} without an API key: anyone who "
            "can reach it could use it. Pass --api-key-file FILE (or --api-key KEY), or "
            "--insecure if the network is yours alone (Immich, for one, sends no key)."
        )
    limits = Limits(**{field: getattr(args, field) for _, field, _, _ in LIMIT_FLAGS})
    spec = ModelSpec(
        model=args.model, backend=args.backend, precision=args.precision,
        threads=args.threads, max_pixels=args.max_pixels, batch_size=args.max_batch,
        device=args.device, verify=not args.no_verify,
    )  # fmt: skip
    return ServeConfig(
        spec=spec, names=served_names(args.model, args.alias), limits=limits, api_key=api_key,
        allow_dirs=_allow_dirs(args.allow_dir), max_batch=args.max_batch,
        batch_window_s=args.batch_window_ms / 1000.0, max_queue=args.max_queue,
        idle_ttl_s=args.idle_ttl or None, image_idle_ttl_s=args.image_idle_ttl or None,
        in_process=args.in_process, preload=args.preload,
        cors_origins=_cors_origins(args.cors_origin),
        # None: bound beyond loopback, where the API key (or --insecure) is the guard
        allowed_hosts=tuple(args.allow_host) if is_loopback(args.host) else None,
        max_in_flight=args.max_connections, index=_photo_index(args.index),
    )  # fmt: skip


def main(argv: list[str]) -> int:
    """Run the server until SIGTERM / Ctrl-C; returns the exit status."""
    from edgeclip.errors import EdgeclipError

    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
    except EdgeclipError as exc:
        print(f"edgeclip serve: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    try:
        import uvicorn
    except ImportError as exc:
        print(
            f"edgeclip serve needs the serve extra: pip install 'edgeclip[serve]' ({exc})",
            file=sys.stderr,
        )
        return 2
    from .app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host=args.host, port=args.port, log_level=args.log_level,
            # the app answers --max-connections with a JSON 503; uvicorn's plain one is the
            # backstop for idle keep-alive connections piling up on top
            limit_concurrency=2 * args.max_connections + 16, timeout_keep_alive=5,
            timeout_graceful_shutdown=args.shutdown_timeout,
            server_header=False, access_log=args.log_level == "debug",
        )
    )  # fmt: skip
    app = server.config.app
    app.state.stop_server = lambda: setattr(server, "should_exit", True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn drained, then re-raised Ctrl-C's SIGINT
        return 130
    if app.state.service.preload_error:
        print(f"edgeclip serve: --preload: {app.state.service.preload_error}", file=sys.stderr)
        return 1
    # uvicorn sets started only after a successful startup (the port bound, --preload loaded)
    return 0 if server.started else 1
