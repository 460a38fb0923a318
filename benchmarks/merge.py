"""Merge several devices' ``results.json`` into one comparison table, CSV and plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeclip.errors import InputError

from .report import SCHEMA, _bar_plot, _table, csv_text, write_text

MERGE_SCHEMA = "edgeclip-bench-merge/1"
#: what ``merge`` writes into ``-o``
MERGE_FILES = ("merged.json", "merged.csv", "comparison.md", "comparison.png")


def merge(paths: list[str | os.PathLike], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Combine several runs' results.json (different devices) into one table, CSV and plot."""
    runs = read_runs(paths)
    labels = _label_runs(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(
        dict.fromkeys(
            (r["variant"], r.get("device", "cpu"), r["batch_size"])
            for run in runs
            for r in run.get("throughput", [])
        )
    )
    md = _comparison_md(runs, labels, keys)
    paths_out = {k: out / name for k, name in zip(("json", "csv", "md", "png"), MERGE_FILES)}
    # atomically, as a run's results are: a Ctrl-C or a full disk leaves the old file or the new
    write_text(paths_out["json"],
               json.dumps({"schema": MERGE_SCHEMA, "runs": runs}, indent=1, default=str) + "\n")  # fmt: skip
    write_text(paths_out["csv"], csv_text(runs))
    write_text(paths_out["md"], "\n".join(md) + "\n")
    groups = [f"{k[0]} b{k[2]}" + ("" if k[1] == "cpu" else f" [{k[1]}]") for k in keys]
    series = {lab: [_pairs_per_s(run, k) for k in keys] for lab, run in zip(labels, runs)}
    try:
        _bar_plot(paths_out["png"], groups, series, "pairs/s", "pairs/s by device")
    except ImportError:  # matplotlib is optional: the table and CSV are written anyway
        paths_out.pop("png").unlink(missing_ok=True)  # an earlier merge's plot is not this one
        print("note: plot skipped: `pip install matplotlib` to get comparison.png")
    return paths_out


def read_runs(paths: list[str | os.PathLike]) -> list[dict]:
    """Each path's results.json (a directory means the one inside); ``InputError`` if unusable."""
    runs = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "results.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(
                f"cannot read bench results {path} ({exc}); pass results.json files."
            ) from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            what = (f"schema {data.get('schema')!r}" if isinstance(data, dict)
                    else f"a JSON {type(data).__name__}, not an object")  # fmt: skip
            raise InputError(f"{path} is not an edgeclip bench result ({what}); pass the "
                             "results.json that `edgeclip bench -o DIR` wrote.")  # fmt: skip
        _check_rows(path, data)
        runs.append(data)
    if len(runs) < 1:
        raise InputError("--merge needs at least one results.json.")
    return runs


def _check_rows(path: Path, data: dict) -> None:
    """``InputError`` naming the first throughput row that lacks what the comparison reads."""
    rows = data.get("throughput") or []
    if not isinstance(rows, list):
        raise InputError(f"{path}: 'throughput' is not a list of rows; the file was edited or "
                         "damaged: rerun edgeclip bench.")  # fmt: skip
    for i, r in enumerate(rows):
        lacks = [k for k in ("variant", "batch_size", "pairs_per_s")
                 if not isinstance(r, dict) or k not in r]  # fmt: skip
        if lacks:
            raise InputError(f"{path}: throughput row {i + 1} has no {', '.join(lacks)}; the file "
                             "was edited or damaged: rerun edgeclip bench.")  # fmt: skip


def _label_runs(runs: list[dict]) -> list[str]:
    """Give every run a distinct ``device_label`` (in place) and return the labels in order."""
    labels = []
    for i, r in enumerate(runs):
        label = r.get("device_label") or f"run {i + 1}"
        r["device_label"] = label if label not in labels else f"{label} #{i + 1}"
        labels.append(r["device_label"])
    return labels


def _pairs_per_s(run: dict, k: tuple) -> float | None:
    """The run's pairs/s for ``k`` = (variant, device, batch size), None if it has no such row."""
    return next(
        (
            r["pairs_per_s"]
            for r in run.get("throughput", [])
            if (r["variant"], r.get("device", "cpu"), r["batch_size"]) == k
        ),
        None,
    )


def _comparison_md(runs: list[dict], labels: list[str], keys: list[tuple]) -> list[str]:
    """comparison.md's lines: a row per key and a column per run, then one line about each run."""
    md = [
        "# edgeclip bench comparison (pairs/s)",
        "",
        _table(
            ["variant", "device", "batch"] + labels,
            [[k[0], k[1], k[2]] + [_pairs_per_s(run, k) for run in runs] for k in keys],
        ),
        "",
    ]
    md += [
        f"- {r['device_label']}: {r.get('model', {}).get('name')}, "
        f"threads {r.get('settings', {}).get('threads') or 'runtime default'}, "
        f"created {r.get('created')}"
        + (" **(interrupted: partial results)**" if r.get("interrupted") else "")
        for r in runs
    ]
    models = list(dict.fromkeys(str((r.get("model") or {}).get("name")) for r in runs))
    if len(models) > 1:  # a row then sets one model's rate beside another's under one name
        md += ["", f"**Note: these runs measured different models ({', '.join(models)}): a row "
               "compares devices only where its columns come from the same model.**"]  # fmt: skip
    return md
