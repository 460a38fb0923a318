"""``edgeclip bench``'s argument checks: each runs before anything is loaded or timed.

Every refusal is an ``InputError`` that names the flag, the value and what to pass instead
(``edgeclip bench`` prints it on one line and exits 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeclip.errors import InputError

#: the largest batch size timed: beyond it the inputs alone outgrow an edge device's memory
MAX_BATCH = 4096
#: what ``report.write_all`` writes into ``-o``
RESULT_FILES = ("results.json", "results.csv", "results.md", "pairs_per_s.png", "latency.png")


def check(args: argparse.Namespace) -> list[int]:
    """Check every flag that needs no bundle; returns the batch sizes. ``args.device`` is
    lower-cased (``CPU`` is ``cpu`` to every runtime)."""
    if not args.model:
        raise InputError("give a bundle dir, checkpoint dir or zoo name to benchmark (or --merge).")
    if args.rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {args.rounds}; 1 times the sweep once, "
                         "3 gives a median on a shared machine.")  # fmt: skip
    check_threads(args.threads)
    sizes = batch_sizes(args.batch_sizes, args.quick)
    args.device = (args.device or "cpu").strip().lower() or "cpu"
    check_output(args.output)
    _check_accuracy_flags(args)
    _check_baseline_flags(args)
    return sizes


def check_threads(threads: int | None) -> None:
    """``--threads``: left out, or 1 to this machine's logical core count."""
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}; leave --threads out for the "
                         "runtime's default (one per core).")  # fmt: skip
    cores, usable = os.cpu_count() or 1, usable_cores()
    if threads > usable:
        where = (f"this machine's {cores} logical cores" if usable == cores else
                 f"the {usable} of this machine's {cores} cores this process may run on (its CPU "
                 "affinity: taskset, a container's cpuset)")  # fmt: skip
        pick = "1" if usable == 1 else f"1 to {usable}"
        raise InputError(f"--threads {threads} is more than {where}; pass {pick}, or leave "
                         "--threads out for the runtime's default.")  # fmt: skip


def usable_cores() -> int:
    """The logical cores this process may run on: its CPU affinity where the OS has one (a
    pinned process or a container's cpuset sees fewer than ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def batch_sizes(text: str | None, quick: bool) -> list[int]:
    """``--batch-sizes``: a comma list of integers 1..MAX_BATCH; deduplicated, ascending."""
    if text is None:
        return [1, 4] if quick else [1, 8, 32]
    example = "e.g. --batch-sizes 1,8,32"
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise InputError(f"--batch-sizes {text!r} is empty; give positive integers, {example}.")
    if not all(items):
        raise InputError(f"--batch-sizes {text!r} has an empty item (a doubled comma, or one at "
                         f"an end); {example}.")  # fmt: skip
    try:
        sizes = [int(s) for s in items]
    except ValueError as exc:
        raise InputError(f"--batch-sizes {text!r} is not a comma list of integers, {example}.") from exc
    bad = [s for s in sizes if s < 1]
    if bad:
        raise InputError(f"--batch-sizes {text!r}: batch sizes must be positive integers, got "
                         f"{bad[0]}; {example}.")  # fmt: skip
    big = [s for s in sizes if s > MAX_BATCH]
    if big:
        raise InputError(f"--batch-sizes {text!r}: {big[0]} is above the largest batch size "
                         f"bench times ({MAX_BATCH}); {example}.")  # fmt: skip
    return sorted(set(sizes))


def check_input_memory(sizes: list[int], image_size: int) -> None:
    """Refuse a largest batch whose input images alone would fill a quarter of free memory."""
    n = max(sizes)
    need = n * 3 * image_size * image_size * 4
    free = _available_bytes()
    if free is not None and need > free / 4:
        raise InputError(
            f"--batch-sizes {n}: the {n} input images alone take {need / 1e9:.1f} GB at "
            f"{image_size} px, over a quarter of the {free / 1e9:.1f} GB of memory free here "
            "(the towers need many times that); pass smaller batch sizes."
        )


def _available_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_output(output: str | os.PathLike, names: tuple[str, ...] = RESULT_FILES) -> Path:
    """``-o``: a folder (existing or not) whose nearest existing ancestor is a writable folder,
    with no folder where one of ``names`` (the files to write) goes."""
    from edgeclip.paths import check_output_folder

    out = check_output_folder(output, "-o", "results/")
    taken = [name for name in names if (out / name).is_dir()]
    if taken:
        raise InputError(f"-o {output}: {out / taken[0]} is a folder, so the result file of that "
                         "name cannot be written; move it or pick another -o.")  # fmt: skip
    return out


def make_output(output: str | os.PathLike) -> Path:
    """Create ``-o`` and write a probe file in it now, so that a folder that cannot be written
    (no permission, a read-only mount) is refused before the timing, not after it."""
    out = Path(output).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".edgeclip-bench-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"-o {output}: cannot write there ({exc.strerror or exc}); pick another "
                         "-o.") from exc  # fmt: skip
    return out


def previous_run(output: str | os.PathLike) -> str | None:
    """A line saying that ``-o`` holds an earlier run's results (which this run replaces)."""
    out = Path(output).expanduser()
    found = [name for name in RESULT_FILES if (out / name).is_file()]
    if not found:
        return None
    try:
        created = json.loads((out / "results.json").read_text()).get("created")
    except (OSError, ValueError, AttributeError):
        created = None
    when = f", created {created}" if created else ""
    return (f"-o {output} already holds a run's results ({', '.join(found)}{when}); "
            "this run replaces them (pass another -o to keep them).")  # fmt: skip


def check_merge_only(args: argparse.Namespace) -> None:
    """``--merge`` combines earlier runs and measures nothing: a model or a measuring flag
    beside it would be ignored without a word, so it is refused."""
    defaults = vars(build_parser().parse_args([]))
    given = [k for k, v in vars(args).items() if k not in ("merge", "output") and v != defaults.get(k)]
    if given:
        flags = ", ".join("MODEL" if k == "model" else "--" + k.replace("_", "-") for k in given)
        raise InputError(f"--merge combines earlier runs' results and measures nothing, so {flags} "
                         f"would do nothing; drop {'it' if len(given) == 1 else 'them'}, or run `edgeclip bench MODEL ...` without "
                         "--merge first.")  # fmt: skip


def _check_accuracy_flags(args: argparse.Namespace) -> None:
    """``--accuracy`` (its folder, ``--class-map`` and ``--templates``) checked now, not after
    the timing; the two others are refused without ``--accuracy`` (they would do nothing)."""
    if not args.accuracy:
        for flag, value, default in (("--class-map", args.class_map, None),
                                     ("--templates", args.templates, "photo")):  # fmt: skip
            if value != default:
                raise InputError(f"{flag} {value} only applies to the zero-shot accuracy run; add "
                                 "--accuracy FOLDER or drop it.")  # fmt: skip
        return
    from edgeclip.prompts import resolve_templates

    from .accuracy import check_readable, scan_folder

    paths, _, _ = scan_folder(args.accuracy, args.class_map)  # InputError naming folder or map
    check_readable(args.accuracy, paths)
    try:
        resolve_templates(args.templates)
    except InputError as exc:
        raise InputError(f"--templates: {exc}") from exc


def _check_baseline_flags(args: argparse.Namespace) -> None:
    """``--checkpoint``: only with the torch baseline, and shaped like a CLIP checkpoint."""
    if not args.checkpoint:
        return
    if args.baseline == "none":
        raise InputError(f"--checkpoint {args.checkpoint} is for the torch baseline, which "
                         "--baseline none turns off; drop one of the two.")  # fmt: skip
    if not Path(args.checkpoint).expanduser().exists():
        return  # variants.checkpoint_path names it (ModelNotFoundError)
    from converters.checkpoints import checkpoint_layout

    try:
        checkpoint_layout(args.checkpoint)
    except InputError as exc:
        raise InputError(f"--checkpoint {args.checkpoint} is not a CLIP checkpoint: {exc}") from exc


def check_torch_installed(args: argparse.Namespace, ckpt: Any, notes: list[str]) -> Any:
    """``ckpt``, or None with a note when torch or transformers is missing here (a runtime-only
    install: the baseline cannot run, and loading it was a ModuleNotFoundError traceback);
    an explicit ``--checkpoint`` is then refused."""
    if ckpt is None:
        return None
    for module in ("torch", "transformers"):
        try:
            importlib.import_module(module)
        except ImportError:
            if args.checkpoint:
                raise InputError(f"--checkpoint {args.checkpoint}: the torch baseline needs "
                                 f"{module}, which is not installed here; pip install torch "
                                 "transformers, or pass --baseline none.") from None  # fmt: skip
            notes.append(f"torch baseline skipped: {module} is not installed here (pip install "
                         "torch transformers to time it)")  # fmt: skip
            return None
    return ckpt


def for_device(variants: list, device: str, notes: list[str]) -> list:
    """The variants whose runtime can use ``--device`` here (the others skipped with a note);
    none: ``InputError`` with what each runtime offers. A row's device is then what ran it."""
    if device in ("auto", "cpu"):
        return variants
    from edgeclip.backends import get_backend

    refusals: dict[str, str] = {}
    for name in dict.fromkeys(v.backend for v in variants):
        try:
            get_backend(name).check_device(device)
        except InputError as exc:
            refusals[name] = str(exc)
    kept = [v for v in variants if v.backend not in refusals]
    if variants and not kept:
        raise InputError(f"--device {device}: no runtime of the variants to measure can use it "
                         f"here. {' '.join(refusals.values())} Use --device cpu (the default) "
                         "or --device auto.")  # fmt: skip
    notes.extend(f"skipped {v.id} on --device {device}: {refusals[v.backend]}"
                 for v in variants if v.backend in refusals)  # fmt: skip
    return kept


def check_something_to_measure(args: argparse.Namespace, bundle: Any, variants: list,
                               ckpt: Any, notes: list[str]) -> None:  # fmt: skip
    """Refuse a run that would time nothing (no variant left and no torch baseline)."""
    if variants or ckpt is not None:
        return
    torch_why = ("--baseline none turns the torch baseline off" if args.baseline == "none" else
                 "the torch baseline's checkpoint is not on this machine (pass --checkpoint DIR)")  # fmt: skip
    skipped = "".join(f" ({n})" for n in notes if n.startswith("skipped"))
    raise InputError(
        f"nothing to measure in {bundle.root}: --backends {args.backends} --precisions "
        f"{args.precisions} leaves no variant{skipped}, and {torch_why}. Pick a backend the "
        "bundle has (`edgeclip info BUNDLE` lists them)."
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``edgeclip bench`` argument parser."""
    # the description is benchmarks/cli.py's first paragraph, as --help showed it before
    p = argparse.ArgumentParser(prog="edgeclip bench", description=(
        "``edgeclip bench``: measure every variant of a bundle (and torch) and write tables and "
        "plots."))  # fmt: skip
    p.add_argument("model", nargs="?", help="bundle dir, checkpoint dir or zoo name")
    p.add_argument("-o", "--output", default="results", help="output folder (default: results/)")
    p.add_argument("--backends", default="all", help="comma list (onnx,openvino,litert) or all")
    p.add_argument("--precisions", default="all", help="comma list (fp32,int8,...) or all")
    p.add_argument("--batch-sizes", default=None, help="comma list, default 1,8,32 (quick: 1,4)")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: runtime's)"
    )
    p.add_argument("--device", default="cpu", help="device for the main sweep (default cpu)")
    p.add_argument("--baseline", default="torch", choices=["torch", "none"])
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint for the torch baseline (default: the bundle's source)",
    )
    p.add_argument(
        "--accuracy",
        default=None,
        metavar="FOLDER",
        help="labelled folder, one subfolder per class",
    )
    p.add_argument("--class-map", default=None, help="JSON {folder: class name}")
    p.add_argument(
        "--templates",
        default="photo",
        help="template set (none, photo, imagenet7, imagenet80) or a template with {}",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: under a minute, unstable numbers"
    )
    p.add_argument(
        "--rounds", type=int, default=1,
        help="time the whole sweep N times in turn; each row is the median round (shared machines)",
    )  # fmt: skip
    p.add_argument(
        "--interleave", action="store_true",
        help="time every variant and torch call by call in turn, so all see the same slow and "
             "fast spells of a shared or virtual CPU (the ratios to torch hold; a round is one "
             "interleaved pass)",
    )  # fmt: skip
    p.add_argument("--no-memory", action="store_true", help="skip peak RSS / cold start")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end JPEG rate")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU path even if CUDA exists")
    p.add_argument(
        "--merge", nargs="+", metavar="RESULTS_JSON", help="merge runs from several devices"
    )
    return p
