"""The ``edgeclip`` command: models, classify, embed, info, convert, bench, distill."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .errors import BatchError, EdgeclipError, InputError

#: classify answers this many images at a time, so a folder's lines come out as they are ready
CLASSIFY_CHUNK = 32


def _load(args: argparse.Namespace):
    from .loader import load

    return load(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                device=args.device, verify=not args.no_verify)  # fmt: skip


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "-m", default="tinyclip-8m", help="zoo name, bundle dir or checkpoint dir"
    )
    p.add_argument("--backend", "-b", default="auto", help="auto, onnx, openvino, litert, torch")
    p.add_argument("--precision", "-p", default="auto", help="auto, fp32, fp16, int8, ...")
    p.add_argument("--threads", "-t", type=int, default=None, help="intra-op threads")
    p.add_argument("--device", "-d", default="auto",
                   help="auto, cpu, cuda, tensorrt (ONNX Runtime), gpu, npu (OpenVINO)")  # fmt: skip
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 and on-device accuracy checks (you know the variant)")  # fmt: skip


def cmd_models(args: argparse.Namespace) -> int:
    from .zoo import list_models

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    print(f"{'name':<22} {'ImageNet':>8} {'GMACs':>6} {'pairs/s':>8}  {'licence':<8} repository")
    for m in models:
        pub = m.get("published") or {}
        repo = next((s.get("repo") for s in m.get("sources", []) if s.get("repo")), "")

        def cell(key: str, p: dict = pub) -> str:
            return "-" if p.get(key) is None else str(p[key])

        print(
            f"{m['name']:<22} {cell('imagenet_zero_shot_top1'):>8} {cell('gmacs'):>6} "
            f"{cell('pairs_per_s'):>8}  {m.get('license', '?'):<8} {repo}"
        )
    return 0


def expand_images(args: list[str]) -> list[str]:
    """Image arguments with each folder replaced by the images under it (as ``edgeclip index``
    finds them, in walk order); a folder without any is refused before the model loads."""
    from .index.walk import image_files

    out: list[str] = []
    for arg in args:
        if not os.path.isdir(arg):
            out.append(arg)
            continue
        unlisted: list[str] = []
        found = image_files(arg, errors=unlisted)
        for why in unlisted:
            print(f"edgeclip: warning: {why}", file=sys.stderr)
        if not found:
            raise InputError(f"{arg} is a folder with no images in it (JPEG, PNG, WebP, GIF, "
                             "TIFF, BMP; hidden folders are skipped); check the path.")  # fmt: skip
        root = os.path.abspath(arg)  # printed under the name the user typed
        out.extend(os.path.join(arg, os.path.relpath(path, root)) for path in found)
    return out


def _classify_row(name: str, top: list | None, why: str | None) -> dict:
    if top is None:
        return {"input": name, "error": why or "failed"}
    return {"input": name, "top": [{"label": lab, "prob": round(p, 6)} for lab, p in top]}


def cmd_classify(args: argparse.Namespace) -> int:
    images = expand_images(args.images)
    model = _load(args)
    rows, failed = [], 0
    for start in range(0, len(images), CLASSIFY_CHUNK):
        part = images[start : start + CLASSIFY_CHUNK]
        try:
            results, failures = model.classify(part, args.labels, top_k=args.top_k,
                                               templates=args.templates), {}  # fmt: skip
        except BatchError as exc:
            results, failures = exc.results, exc.failures
        failed += len(failures)
        for i, (name, top) in enumerate(zip(part, results)):
            row = _classify_row(name, top, failures.get(i))
            if args.json:
                rows.append(row)
            elif "error" in row:
                print(f"{row['input']}: ERROR {row['error']}", file=sys.stderr, flush=True)
            else:
                tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in row["top"])
                print(f"{row['input']}: {tops}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def _is_image_arg(arg: str) -> bool:
    from .index.walk import IMAGE_SUFFIXES  # dataclasses and all: not on every command's path

    return Path(arg).suffix.lower() in IMAGE_SUFFIXES or Path(arg).is_file()


def _writable_output(name: str) -> Path:
    """``-o``'s path, refused before any work when it cannot be written."""
    path = Path(name)
    if path.is_dir():
        raise InputError(f"-o {name}: it is a directory; give a file name, e.g. {path / 'embeddings.npy'}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"-o {name}: folder {parent} does not exist; create it (mkdir -p {parent}) "
                         "or write elsewhere.")  # fmt: skip
    if not os.access(parent, os.W_OK):
        raise InputError(f"-o {name}: folder {parent} is not writable; write elsewhere.")
    return path


def _encode_rows(encode, values: list, idx: list[int], rows: list, failures: dict) -> None:
    """Rows of one modality into ``rows`` at ``idx``; a failed input's row is NaN (None when
    every input of that modality failed), and ``failures`` gets its reason."""
    try:
        emb = encode(values)
    except BatchError as exc:
        emb = exc.results
        failures.update({idx[j]: why for j, why in exc.failures.items()})
    for j, i in enumerate(idx):
        rows[i] = emb[j] if emb is not None else None


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    output = _writable_output(args.output) if args.output else None
    folders = [a for a in args.inputs if not args.text and os.path.isdir(a)]
    if folders:
        raise InputError(f"{folders[0]} is a folder; pass its image files ({folders[0]}/*.jpg), "
                         f"or index it to keep vectors by path: edgeclip index {folders[0]} "
                         "--db photos.db. With --text it is embedded as words.")  # fmt: skip
    model = _load(args)
    kinds = [
        "text"
        if args.text
        else "image"
        if args.image
        else ("image" if _is_image_arg(a) else "text")
        for a in args.inputs
    ]
    rows: list = [None] * len(args.inputs)
    failures: dict[int, str] = {}
    img_idx = [i for i, k in enumerate(kinds) if k == "image"]
    txt_idx = [i for i, k in enumerate(kinds) if k == "text"]
    for encode, idx in ((model.encode_image, img_idx), (model.encode_text, txt_idx)):
        if idx:
            _encode_rows(encode, [args.inputs[i] for i in idx], idx, rows, failures)
    # Every input failing still gives the file its NaN rows, at the bundle's width.
    dim = next((r.shape[0] for r in rows if r is not None), None) or model.embed_dim or 0
    out = (
        np.stack([r if r is not None else np.full(dim, np.nan, np.float32) for r in rows])
        if dim
        else None
    )
    for i, why in sorted(failures.items()):
        name = args.inputs[i] if args.inputs[i].strip() else repr(args.inputs[i])
        print(f"{name}: ERROR {why} (its row is NaN)", file=sys.stderr)
    if output and out is not None:
        tmp = output.with_name(output.name + ".partial")
        try:
            with open(tmp, "wb") as fh:  # a file handle: np.save would append .npy to other names
                np.save(fh, out)
            os.replace(tmp, output)  # never half a file under the name asked for
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(f"-o {output}: cannot write it ({exc.strerror}); write elsewhere.") from exc
        counts = ", ".join(f"{kinds.count(k)} {k}{'s' if kinds.count(k) > 1 else ''}"
                           for k in ("image", "text") if k in kinds)  # fmt: skip
        print(f"wrote {output}: {out.shape[0]} x {out.shape[1]} float32 ({counts}, in input order)")
    elif out is not None:
        print(
            json.dumps(
                {"shape": list(out.shape), "kinds": kinds, "embeddings": out.round(6).tolist()}
            )
        )
    return 1 if failures else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .stages import stage

    return int(stage("convert-cli")(args) or 0)


def _forward(stage_name: str, argv: list[str]) -> int:
    import importlib

    if stage_name in ("bench", "distill"):
        from .stages import stage

        main = stage(stage_name)
    else:  # a runtime command with a CLI of its own (serve, index)
        try:
            main = importlib.import_module(stage_name).main
        except ImportError as exc:
            print(f"this command needs an optional part of edgeclip that is not installed "
                  f"({exc}).", file=sys.stderr)  # fmt: skip
            return 2
    return int(main(argv) or 0)


# commands whose arguments belong to another CLI: name -> (stage or module, help, argv prefix)
_FORWARDED = {
    "bench": ("bench", "benchmark every variant (see benchmarks/README.md)", []),
    "distill": (
        "distill",
        "distil a student from a teacher (edgeclip[distill])",
        ["distill"],
    ),
    "train-teacher": (
        "distill",
        "train a teacher CLIP on procedural data",
        ["train-teacher"],
    ),
    "serve": ("edgeclip.serve.cli", "HTTP service: OpenAI embeddings, Immich /predict (edgeclip[serve])", []),
    "index": ("edgeclip.index.cli", "index photo folders for search", ["index"]),
    "search": ("edgeclip.index.cli", "search an index by text or by image", ["search"]),
    "dupes": ("edgeclip.index.cli", "list near-duplicate photos in an index", ["dupes"]),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="edgeclip", description="Zero-shot vision on the edge with small CLIP models."
    )
    parser.add_argument("--version", action="version", version=f"edgeclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
    # Subcommands are added in the order `edgeclip --help` lists them.
    _add_classify_parser(sub)
    _add_embed_parser(sub)

    from .cli_bundle import add_parsers

    add_parsers(sub)
    _add_convert_parser(sub)

    for name, help_ in _FORWARDED.items():
        # parsed by the stage's own CLI (see main); listed here for `edgeclip --help`
        sub.add_parser(name, help=help_[1], add_help=False)
    return parser


def _add_classify_parser(sub: argparse._SubParsersAction) -> None:
    """``edgeclip classify``: zero-shot labels for images."""
    p = sub.add_parser("classify", help="zero-shot classify images against labels")
    p.add_argument("images", nargs="+")
    p.add_argument("--labels", "-l", nargs="+", required=True)
    p.add_argument("--top-k", "-k", type=int, default=3)
    p.add_argument(
        "--templates",
        default=None,
        help="none, photo, imagenet7, imagenet80, or a template with {}",
    )
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_classify)


def _add_embed_parser(sub: argparse._SubParsersAction) -> None:
    """``edgeclip embed``: images and texts to one .npy of embeddings."""
    p = sub.add_parser(
        "embed", help="embed images and/or texts into one .npy (rows in input order)"
    )
    p.add_argument(
        "inputs", nargs="+", help="image paths or texts (an existing file or image suffix = image)"
    )
    p.add_argument("--output", "-o", default=None, help="write a float32 (N, D) .npy here")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="treat every input as text")
    kind.add_argument("--image", action="store_true", help="treat every input as an image")
    _add_model_args(p)
    p.set_defaults(func=cmd_embed)


def _add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """``edgeclip convert``: a checkpoint to a bundle."""
    p = sub.add_parser("convert", help="checkpoint -> bundle (needs edgeclip[convert])")
    p.add_argument(
        "checkpoint", help="HF CLIPModel dir, open_clip .pt (+ --config JSON), or zoo name"
    )
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--config", default=None, help="open_clip JSON config for a .pt state dict")
    p.add_argument("--backend", default="onnx", help="comma list: onnx,openvino,litert")
    p.add_argument("--precision", default="fp32", help="comma list: fp32,fp16,int8")
    p.add_argument("--calibration", default=None, help="folder of images for INT8 calibration")
    p.add_argument(
        "--captions", default=None, help="text file, one caption a line, for calibration"
    )
    p.add_argument(
        "--int8-config", default=None, metavar="BACKEND=CONFIG[,...]",
        help="build this INT8 configuration only instead of searching (still gated), e.g. "
        "openvino=ptq-mlp-only; the choices are in docs/architecture.md",
    )  # fmt: skip
    p.add_argument("--int8-fallback", action="store_true",
                   help="if a pinned INT8 configuration fails its gate, search the others")  # fmt: skip
    p.add_argument("--name", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgeclip`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _warning_line
    if argv and argv[0] in _FORWARDED:
        target, _, prefix = _FORWARDED[argv[0]]
        return _exit_status(lambda: _forward(target, prefix + argv[1:]))
    args = build_parser().parse_args(argv)
    return _exit_status(lambda: args.func(args))


_python_showwarning = warnings.showwarning


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """edgeclip's own warnings as one line for people ("edgeclip: warning: ..."), not Python's
    "path/cli.py:21: RuntimeWarning:" and a source line; others keep Python's format."""
    if not str(filename).startswith(os.path.dirname(__file__)):
        return _python_showwarning(message, category, filename, lineno, file, line)
    print(f"edgeclip: warning: {message}", file=file or sys.stderr)


def _exit_status(command: Callable[[], int | None]) -> int:
    """Run ``command``; an edgeclip error is one line and exit 2, Ctrl-C exit 130, and a reader
    that went away (`edgeclip search ... --paths | head`) ends it quietly."""
    try:
        return int(command() or 0)
    except EdgeclipError as exc:
        print(f"edgeclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeclip: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python's own flush at exit would raise again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
