"""``edgeclip bench``: measure every variant of a bundle (and torch) and write tables and plots.

    edgeclip bench MODEL_OR_BUNDLE [--backends all] [--precisions all] [--batch-sizes 1,8,32]
        [--threads N] [--accuracy FOLDER] [--baseline torch] [--quick] -o results/
    edgeclip bench --merge a/results.json b/results.json -o cmp/

Ctrl-C stops measuring and still writes everything measured so far.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeclipError, InputError

from . import bench_args, report
from .hosts import cpu_ticks, steal_share
from .variants import baseline_id


def _progress(total: int):
    from edgeclip.progress import progress

    return progress(total, unit="step")


def _new_results(args: argparse.Namespace, bundle: Any, variants: list, notes: list[str],
                 settings: Any, sizes: list[int]) -> dict[str, Any]:  # fmt: skip
    from .device import device_report, short_name

    dev = device_report()
    return {
        "schema": report.SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"name": bundle.name, "bundle": str(bundle.root),
                  "architecture": bundle.manifest.get("architecture")},  # fmt: skip
        "device": dev,
        "device_label": short_name(dev),
        "settings": {
            **settings.as_dict(), "threads": args.threads, "batch_sizes": sizes, "rounds": args.rounds,
            "interleave": bool(getattr(args, "interleave", False)),
            "quick": args.quick, "device": args.device,
            "method": "TinyCLIP: towers timed separately, items/s = batch / median s per call; "
                      "pairs/s = 1/(1/images_per_s + 1/texts_per_s)",
            # the runtime settings in force (arena, spinning, OpenVINO hints, ...): a rate
            # belongs to them as much as to the CPU
            "edgeclip": _runtime_settings(),
        },  # fmt: skip
        "baseline": baseline_id(variants) if args.baseline == "torch" else None,
        "macs": None, "roofline": None, "throughput": [], "memory": [], "e2e": [], "accuracy": None,
        "notes": notes, "interrupted": False,
        # which INT8 search configuration each timed variant is: a speed belongs to a config
        "variant_configs": {v.id: v.options.get("config") for v in variants},
    }  # fmt: skip


def _runtime_settings() -> dict[str, Any]:
    """Every ``EDGECLIP_*`` variable's value in force (its default when unset), and the
    oneDNN overrides that are set."""
    from edgeclip import settings as runtime

    return {**{name: runtime.get(name) for name in runtime.SETTINGS}, **runtime.kernel_overrides()}


def _step_count(args: argparse.Namespace, n_variants: int, ckpt: Any, gpu_wanted: bool) -> int:
    return (2 + n_variants + (ckpt is not None) + gpu_wanted
            + (0 if args.no_e2e else n_variants)
            + (0 if args.no_memory else n_variants + (ckpt is not None and not args.quick))
            + n_variants * bool(args.accuracy))  # fmt: skip


def _throughputs(args, opened, torch_model, base_id, inputs, sizes, settings, add, bar):
    """Time every opened variant (``variants.open_all``), then torch eager (``torch_model``, if its
    checkpoint is here, in rows labelled ``base_id``).

    With ``--rounds N`` all towers stay open and the whole sweep runs N times in turn, so a
    slow spell of a shared machine lands on every variant alike; each row is the median round.
    """
    from . import throughput as T
    from . import variants as V

    pixels, ids = inputs
    towers = []
    for v, ri, rt, device in opened:  # device: what the session runs on, not what was asked
        note = lambda b, v=v: T.chunk_note(v.image.batch_sizes, b)  # noqa: E731
        towers.append(({**V.describe(v), "device": device}, ri, rt, note))
    if torch_model is not None:
        ri, rt, _ = T.torch_towers(torch_model, args.threads)
        label = {"variant": base_id, "backend": "torch", "precision": "fp32",
                 "device": "cpu"}  # fmt: skip
        towers.append((label, ri, rt, None))
    if getattr(args, "interleave", False):
        T.run_interleaved(towers, args.rounds, inputs, sizes, settings, add, bar)
        return
    rounds = args.rounds
    measured: list[list[list[dict]]] = [[] for _ in towers]
    try:
        for r in range(rounds):
            for k, (label, ri, rt, note) in enumerate(towers):
                which = f" round {r + 1}/{rounds}" if rounds > 1 else ""
                bar.set_description(f"throughput {label['variant']}{which}")

                def on_row(row: dict, name=label["variant"]) -> None:  # readiness: people, tests
                    if rounds == 1:  # one round: a row is final as soon as it is timed
                        add(row)
                    bar.set_postfix_str(f"{name} batch {row['batch_size']} done")

                measured[k].append(T.measure(label, ri, rt, pixels, ids, sizes, settings,
                                             notes=note, on_row=on_row))  # fmt: skip
                if r == rounds - 1:
                    bar.update(1)
    finally:  # on Ctrl-C too: the rounds each tower completed (a row's "rounds" says how many)
        if rounds > 1:
            for per_round in measured:
                for row in T.combine_rounds(per_round) if per_round else []:
                    add(row)


def _prepare(args: argparse.Namespace) -> tuple[Any, list, list[str], list[int], Any, Any]:
    """Check every argument, then open the bundle: (bundle, variants, notes, sizes, checkpoint,
    its torch model).

    Nothing is loaded or timed before a bad argument is refused (``InputError``)."""
    from edgeclip.loader import resolve_bundle

    from . import variants as V

    sizes = bench_args.check(args)
    bundle = resolve_bundle(args.model)
    variants, notes = V.select(bundle, args.backends, args.precisions)
    variants = bench_args.for_device(variants, args.device, notes)
    ckpt = V.checkpoint_path(bundle, args.checkpoint) if args.baseline == "torch" else None
    ckpt = bench_args.check_torch_installed(args, ckpt, notes)
    if args.baseline == "torch" and ckpt is None and not any(
            n.startswith("torch baseline skipped") for n in notes):  # fmt: skip
        notes.append("torch baseline skipped: the bundle's source checkpoint is not on this "
                     "machine (pass --checkpoint DIR)")  # fmt: skip
    bench_args.check_something_to_measure(args, bundle, variants, ckpt, notes)
    flag = f"--checkpoint {ckpt}" if args.checkpoint else f"the bundle's source checkpoint {ckpt}"
    torch_model = V.load_baseline(ckpt, bundle, flag) if ckpt is not None else None
    bench_args.check_input_memory(sizes, int(bundle.preprocess.get("image_size", 224)))
    bench_args.make_output(args.output)
    replacing = bench_args.previous_run(args.output)
    if replacing:
        print("edgeclip bench: note: " + replacing, file=sys.stderr)
    return bundle, variants, notes, sizes, ckpt, torch_model


def run(args: argparse.Namespace) -> int:
    """Measure, write results, print the table; 130 when interrupted (results still written)."""
    from . import throughput as T
    from . import variants as V

    if args.merge:
        return _run_merge(args)
    bundle, variants, notes, sizes, ckpt, torch_model = _prepare(args)
    settings = T.Settings.quick() if args.quick else T.Settings()
    results = _new_results(args, bundle, variants, notes, settings, sizes)
    if ckpt is None:
        results["baseline"] = None
    gpu_wanted = not args.no_gpu and not args.quick
    bar = _progress(_step_count(args, len(variants), ckpt, gpu_wanted))
    inputs = T.sample_inputs(max(sizes + ([32] if gpu_wanted else [])),
                             int(bundle.preprocess.get("image_size", 224)))  # fmt: skip
    add = results["throughput"].append
    ticks = cpu_ticks()
    try:
        _macs_and_peaks(results, bundle, notes, args, bar)
        opened = V.open_all(bundle, variants, args.threads, args.device, notes)
        if variants and not opened and torch_model is None:
            raise InputError(f"no variant of {bundle.root} to measure opens here: "
                             + "; ".join(n for n in notes if "do not open" in n))  # fmt: skip
        base_id = baseline_id(variants)
        variants = [v for v, *_ in opened]  # the later stages measure the ones that open
        _throughputs(args, opened, torch_model, base_id, inputs, sizes, settings, add, bar)
        notes += T.spell_advice(results["throughput"], bool(getattr(args, "interleave", False)))
        if gpu_wanted:
            _gpu_path(bundle, variants, torch_model, inputs, add, notes, bar)
        del torch_model
        if not args.no_e2e:
            _e2e(results, bundle, variants, args, sizes, bar)
        if not args.no_memory:
            _memory(results, bundle, variants, args, ckpt, bar)
        if args.accuracy:
            results["accuracy"] = _accuracy(bundle, variants, args, bar)
    except KeyboardInterrupt:
        results["interrupted"] = True
        notes.append("interrupted by Ctrl-C: partial results")
    except Exception as exc:  # a failure midway: keep what was measured, marked as partial
        results["interrupted"] = True
        notes.append(f"stopped by an error ({type(exc).__name__}: {exc}): partial results")
        if _finish(results, variants, inputs[1], args.output, ticks, bar):
            print(f"edgeclip bench: the results measured before the error are in -o {args.output}",
                  file=sys.stderr)  # fmt: skip
        raise
    paths = _finish(results, variants, inputs[1], args.output, ticks, bar)
    if paths is None:
        print(f"edgeclip bench: interrupted before anything was measured; nothing written to "
              f"-o {args.output}", file=sys.stderr)  # fmt: skip
        return 130
    print(report.console_table(results))
    for n in notes:
        print("note: " + n)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 130 if results["interrupted"] else 0


def _finish(results: dict, variants: list, ids: Any, output: str, ticks: Any,
            bar: Any) -> dict[str, Path] | None:  # fmt: skip
    """Close the bar and write the results; None (nothing written) when a run stopped early
    before anything was measured: it must not replace an earlier run's results with nothing."""
    bar.close()
    results["cpu_steal_share"] = steal_share(ticks)  # a shared VM's slow spell shows here
    if results["interrupted"] and not _measured(results):
        return None
    from .roofline import mark_text_tokens

    mark_text_tokens(results["throughput"], variants, ids)
    return _write(results, output)


def _measured(results: dict) -> bool:
    """Whether a run holds any measured row (throughput, end to end, memory or accuracy)."""
    return any(results[k] for k in ("throughput", "e2e", "memory", "accuracy"))


def _write(results: dict, output: str) -> dict[str, Path]:
    """``report.write_all``, its ``OSError`` (a full disk, ...) one line that names ``-o``."""
    try:
        return report.write_all(results, output)
    except OSError as exc:
        raise InputError(f"-o {output}: cannot write the results there ({exc.strerror or exc}: "
                         f"{exc.filename}); free space or pick another -o.") from exc


def _run_merge(args: argparse.Namespace) -> int:
    """``--merge``: combine the given results into ``--output`` and print the comparison."""
    from .merge import MERGE_FILES, merge, read_runs

    bench_args.check_merge_only(args)
    bench_args.check_output(args.output, MERGE_FILES)
    read_runs(args.merge)  # an unusable input is refused before -o is made
    bench_args.make_output(args.output)
    try:
        paths = merge(args.merge, args.output)
    except OSError as exc:
        raise InputError(f"-o {args.output}: cannot write the comparison there ({exc.strerror or exc}"
                         f": {exc.filename}); free space or pick another -o.") from exc  # fmt: skip
    print((Path(args.output) / "comparison.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _macs_and_peaks(results: dict, bundle: Any, notes: list[str], args: argparse.Namespace,
                    bar: Any) -> None:  # fmt: skip
    """Record the model's MACs and, on CPU, this machine's GEMM peak (two progress steps)."""
    from .macs import bundle_macs

    bar.set_description("MACs")
    results["macs"] = bundle_macs(bundle, notes)
    bar.update(1)
    if args.device in (None, "", "auto", "cpu"):  # MLAS GEMM peaks: a CPU roofline only
        from .roofline import peaks

        bar.set_description("GEMM peak")
        results["roofline"] = {"peaks": peaks(args.threads, 0.2 if args.quick else 1.0)}
    bar.update(1)


def _gpu_path(bundle: Any, variants: list, torch_model: Any, inputs: tuple, add: Any,
              notes: list[str], bar: Any) -> None:  # fmt: skip
    """Time every GPU path that exists at batch 32; rows go to ``add``, notes to ``notes``."""
    from .gpu import run_gpu

    bar.set_description("GPU path")
    _rows, gnotes = run_gpu(bundle, variants, torch_model, *inputs, 32, on_row=add)
    notes.extend(gnotes)
    bar.update(1)


def _e2e(
    results: dict, bundle: Any, variants: list, args: argparse.Namespace, sizes: list[int], bar: Any
) -> None:
    from .e2e import end_to_end, open_model, write_jpegs

    # the largest timed batch, so that the model-only rate beside it is a measured one
    batch = max(sizes)
    n = max(8 if args.quick else 64, batch)
    with tempfile.TemporaryDirectory(prefix="edgeclip-bench-") as tmp:
        paths = write_jpegs(Path(tmp), n)
        for v in variants:
            bar.set_description(f"end-to-end {v.id}")
            model = open_model(bundle, v, args.threads, args.device)
            row = {
                "variant": v.id,
                **end_to_end(model, paths, batch, repeats=1 if args.quick else 3),
            }
            row["model_images_per_s"] = next(
                (
                    r["images_per_s"]
                    for r in results["throughput"]
                    if r["variant"] == v.id and r["batch_size"] == batch
                ),
                None,
            )
            results["e2e"].append(row)
            bar.update(1)


def _memory(
    results: dict, bundle: Any, variants: list, args: argparse.Namespace, ckpt: Any, bar: Any
) -> None:
    from .memory import measure_process
    from .variants import variant_size_mb

    for v in variants:
        bar.set_description(f"memory {v.id}")
        row = measure_process(
            {
                "kind": "variant",
                "bundle": str(bundle.root),
                "variant": v.id,
                "threads": args.threads,
                "device": args.device,
            }
        )
        results["memory"].append(
            {"variant": v.id, "size_mb": variant_size_mb(bundle, v)["total"], **row}
        )
        bar.update(1)
    if ckpt is not None and args.quick:
        results["notes"].append(
            "torch peak RSS / cold start skipped in --quick (loading torch takes seconds)"
        )
    elif ckpt is not None:
        bar.set_description("memory torch")
        row = measure_process(
            {
                "kind": "torch",
                "checkpoint": str(ckpt),
                "threads": args.threads,
                "image_size": int(bundle.preprocess.get("image_size", 224)),
            }
        )
        size = (
            sum(f.stat().st_size for f in Path(ckpt).rglob("*") if f.is_file())
            if Path(ckpt).is_dir()
            else Path(ckpt).stat().st_size
        )
        results["memory"].append({"variant": baseline_id(variants), "size_mb": size / 1e6, **row})
        bar.update(1)


def _accuracy(bundle: Any, variants: list, args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    from .accuracy import evaluate
    from .e2e import open_model

    models = {v.id: open_model(bundle, v, args.threads, args.device) for v in variants}
    ref = next((v.id for v in variants if v.precision == "fp32"), None)
    bar.set_description("accuracy")
    return evaluate(
        models,
        args.accuracy,
        templates=args.templates,
        class_map=args.class_map,
        reference=ref,
        progress=bar,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edgeclip bench``; returns the exit status (2 on bad input)."""
    args = bench_args.build_parser().parse_args(argv)
    try:
        return run(args)
    except EdgeclipError as exc:
        print(f"edgeclip bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before measuring began or while writing: nothing half-written
        print("edgeclip bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
