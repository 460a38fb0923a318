"""``edgeclip info`` and ``edgeclip verify``: what a bundle holds, and how each variant does here."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .errors import EdgeclipError


def _num(value: Any, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _header(bundle: Any) -> None:
    m = bundle.manifest
    src = m.get("source") or {}
    print(f"bundle    {bundle.root}")
    print(f"name      {bundle.name}   (edgeclip {m.get('edgeclip_version', '?')}, "
          f"created {m.get('created', '?')})")  # fmt: skip
    print(f"source    {src.get('kind', '?')}: {src.get('repo') or src.get('path', '?')}"
          + (f"@{src['revision']}" if src.get("revision") else ""))  # fmt: skip
    print("arch      " + ", ".join(f"{k}={v}" for k, v in (m.get("architecture") or {}).items()))
    print(f"logit     scale {bundle.logit_scale:.4g};  preprocess {bundle.preprocess}")
    probe = m.get("probe")
    # .get: the check needs only the probe's files, so a manifest without these still works
    print(f"probe     {probe.get('n_images', '?')} images, {probe.get('n_texts', '?')} texts, "
          f"{len(probe.get('labels') or [])} labels; reference {probe.get('reference', '?')}"
          if probe
          else "probe     none (older bundle): `edgeclip verify BUNDLE --refresh` adds one")  # fmt: skip


def _host_table(statuses: list, files: dict[str, Any]) -> None:
    from .verify import summarise

    print(f"\n{'variant':<22} {'precision':<13} {'MB':>6}  {'conversion gate':<22} "
          f"{'img cos':>8} {'txt cos':>8} {'top-1':>6} {'drift':>8} {'s':>5}  on this host")  # fmt: skip
    for st, row in zip(statuses, summarise(statuses)):
        v = st.variant
        size = sum(meta["size"] for rel, meta in files.items() if rel.startswith(v.id + "/")) / 1e6
        conv = ("reference" if v.is_reference and not v.passed else
                f"{'passed' if v.passed else 'FAILED'} ({v.gate.get('isa', '?')})")  # fmt: skip
        invariant = "" if row["batch_invariant"] in (None, True) else " batch-dependent"
        print(f"{v.id:<22} {v.precision:<13} {size:>6.1f}  {conv:<22} "
              f"{_num(row['image_cosine_mean']):>8} {_num(row['text_cosine_mean']):>8} "
              f"{_num(row['top1_agreement'], 3):>6} {_num(row['batch_drift'], 6):>8} "
              f"{_num(row['seconds'], 2):>5}  {row['state']}{invariant}"
              + (" (cached)" if row["cached"] else ""))  # fmt: skip
        if st.state != "passed":
            print(f"{'':<22}   {st.reason}")


def _check_threads(threads: int | None) -> None:
    """Refused before any check runs: a session that cannot open under a bad thread count
    would otherwise leave a failed verdict in this host's cache for every later load."""
    from .errors import InputError

    if threads is not None and threads < 0:
        raise InputError(f"--threads {threads}: give a positive number of threads, or 0 (or "
                         "leave it out) for the runtime's default, one per core.")  # fmt: skip


def cmd_info(args: argparse.Namespace) -> int:
    from .loader import resolve_bundle, select_variant
    from .selection import verify_all

    _check_threads(args.threads)
    bundle = resolve_bundle(args.bundle)
    statuses = verify_all(bundle, args.threads)
    try:
        chosen, why = select_variant(bundle, threads=args.threads)
        auto = {"variant": chosen.id, "reason": why}
    except EdgeclipError as exc:
        auto = {"variant": None, "reason": str(exc)}
    if args.json:
        # The manifest as written, plus what the table shows: a variant the manifest ships may
        # be damaged, not installed or failed here, and scripts must see that too.
        print(json.dumps({**bundle.manifest, "on_this_host": _host_json(statuses, auto)}, indent=2))
        return 0
    _header(bundle)
    _host_table(statuses, bundle.manifest.get("files", {}))
    print(f"\nauto on this host: {auto['variant'] or 'none'} ({auto['reason']})")
    return 0


def _host_json(statuses: list, auto: dict[str, Any]) -> dict[str, Any]:
    from .verify import cpu_identity, summarise, widest_isa

    host = cpu_identity()
    return {"cpu": host["cpu"], "isa": widest_isa(host["isa"]), "variants": summarise(statuses),
            "auto": auto}  # fmt: skip


def cmd_verify(args: argparse.Namespace) -> int:
    """Run every variant's probe set on this host; exit 1 if any installed variant fails."""
    from .loader import resolve_bundle
    from .probeset import refresh
    from .selection import verify_all
    from .verify import cpu_identity, summarise, widest_isa

    _check_threads(args.threads)
    bundle = resolve_bundle(args.bundle)
    if args.refresh:
        bundle = refresh(bundle)
    statuses = verify_all(bundle, args.threads)
    if args.json:
        host = cpu_identity()
        print(json.dumps({"bundle": str(bundle.root), "cpu": host["cpu"],
                          "isa": widest_isa(host["isa"]), "variants": summarise(statuses)},
                         indent=2))  # fmt: skip
    else:
        host = cpu_identity()
        print(f"{bundle.root} on {host['cpu']} ({widest_isa(host['isa'])})")
        _host_table(statuses, bundle.manifest.get("files", {}))
    return 1 if any(st.state == "failed" for st in statuses) else 0


def add_parsers(sub: Any) -> None:
    """Register ``info`` and ``verify`` on the top-level sub-parsers."""
    p = sub.add_parser("info", help="describe a bundle: variants, gates, status on this host")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true",
                   help="print the manifest, with each variant's status here under on_this_host")  # fmt: skip
    p.add_argument("--threads", "-t", type=int, default=None)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("verify", help="run every variant's probe set on this host; print a table")
    p.add_argument("bundle")
    p.add_argument("--refresh", action="store_true",
                   help="give an older bundle a probe set from its reference variant first")  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.set_defaults(func=cmd_verify)
