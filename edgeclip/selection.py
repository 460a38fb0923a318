"""Which variant ``edgeclip.load`` runs: explicit choices must exist and pass on this host;
``auto`` times the variants not known to fail here and serves the fastest that passes its
on-device check (``autoselect`` + ``edgeclip.verify``); only the winner is checked.

Sessions opened for the probe and the check are kept and handed to the model, so verifying
the chosen variant costs no second session build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .autoselect import choose, precision_rank
from .backends import PREFERENCE, available_backends, canonical_name, get_backend
from .backends.base import Session
from .bundle import Bundle, Variant
from .errors import BackendUnavailableError, InputError
from .towers import TowerRunner, variant_opener
from .verify import Status, known_status, refusal, status


def memo_opener(root: Path, variant: Variant, threads: int | None, device: str) -> Callable:
    """``variant_opener`` that opens each graph file once and hands back the same session."""
    base, sessions = variant_opener(root, variant, threads, device), {}

    def opener(rel: str) -> Session:
        if rel not in sessions:
            sessions[rel] = base(rel)
        return sessions[rel]

    opener.device = device  # type: ignore[attr-defined]
    return opener


@dataclass
class Selection:
    """The chosen variant, why, its on-device status, and the opener holding its sessions."""

    variant: Variant
    reason: str
    status: Status | None
    opener: Callable[[str], Session]
    statuses: dict[str, Status] = field(default_factory=dict)


class _Verifier:
    """Checks variants on demand (once each), remembering openers so sessions are reused."""

    def __init__(self, bundle: Bundle, threads: int | None, device: str, verify: bool):
        self.bundle, self.threads, self.device, self.verify = bundle, threads, device, verify
        self.openers: dict[str, Callable] = {}
        self.statuses: dict[str, Status] = {}

    def opener(self, v: Variant) -> Callable:
        if v.id not in self.openers:
            self.openers[v.id] = memo_opener(self.bundle.root, v, self.threads, self.device)
        return self.openers[v.id]

    def towers(self, v: Variant) -> tuple[TowerRunner, TowerRunner]:
        op = self.opener(v)
        return TowerRunner(v.image, op, is_text=False), TowerRunner(v.text, op, is_text=True)

    def ok(self, v: Variant) -> bool:
        if not self.verify:
            return v.passed or v.is_reference
        if v.id not in self.statuses:
            self.statuses[v.id] = status(self.bundle, v, self.towers(v))
        return self.statuses[v.id].usable

    def may_run(self, v: Variant) -> bool:
        """False only for a variant already known to fail here; finding out opens nothing."""
        if not self.verify:
            return v.passed or v.is_reference
        if v.id not in self.statuses:
            known = known_status(self.bundle, v, self.device)
            if known is None:
                return True  # only its on-device check can tell, once it is worth running
            self.statuses[v.id] = known
        return self.statuses[v.id].usable

    def release(self, v: Variant) -> None:
        self.openers.pop(v.id, None)

    def done(self, v: Variant, reason: str) -> Selection:
        return Selection(v, reason, self.statuses.get(v.id), self.opener(v), self.statuses)


def _precision_matches(wanted: str, have: str) -> bool:
    return wanted == have or have.startswith(wanted + "-")


def _candidates(bundle: Bundle, backend: str, precision: str) -> tuple[list[Variant], list[str]]:
    installed = available_backends()
    if backend != "auto":
        get_backend(backend)  # raises BackendUnavailableError naming the extra
        backends = [backend]
    else:
        backends = [b for b in PREFERENCE if b in installed]
    found = [v for v in bundle.variants if v.backend in backends]
    if precision != "auto":
        exact = [v for v in found if v.precision == precision]
        found = exact or [v for v in found if _precision_matches(precision, v.precision)]
    if not found:
        have = ", ".join(f"{v.backend}/{v.precision}" for v in bundle.variants) or "none"
        hint = "" if installed else " No backend is installed: `pip install edgeclip[onnx]`."
        hint += "".join(f" Left out, its files damaged: {vid} ({'; '.join(why)}); re-download "
                        "or re-convert the bundle." for vid, why in bundle.damaged.items())  # fmt: skip
        raise InputError(
            f"bundle {bundle.root} has no variant for backend={backend!r} precision={precision!r} "
            f"among installed backends ({', '.join(installed) or 'none'}); it has: {have}.{hint}"
        )
    return found, backends


def _offering(device: str, backends: list[str]) -> list[str]:
    """The ``backends`` that can use ``device`` here; none: an error with what each offers."""
    refusals: dict[str, str] = {}
    for name in backends:
        try:
            get_backend(name).check_device(device)
        except InputError as exc:
            refusals[name] = str(exc)
    usable = [b for b in backends if b not in refusals]
    if not usable:
        raise InputError(f"device {device!r} is not usable by any installed backend the bundle "
                         f"has variants for: {' '.join(refusals.values())} Use device='auto' "
                         "(--device auto) to let edgeclip choose.")  # fmt: skip
    return usable


def _unchecked(v: Variant) -> str:
    if v.gate.get("reason"):
        return v.gate["reason"]
    return "could not run here (the speed probe's errors are in probe.json under EDGECLIP_HOME)"


def _none_usable(bundle: Bundle, found: list[Variant], ver: _Verifier) -> InputError:
    why = "; ".join(
        f"{v.id}: {ver.statuses[v.id].reason if v.id in ver.statuses else _unchecked(v)}"
        for v in found
    )
    return InputError(
        f"no variant of {bundle.root} that matches is usable on this host: {why}. "
        "`edgeclip verify BUNDLE` shows each one's numbers; verify=False (--no-verify) skips "
        "the check."
    )


def select(bundle: Bundle, backend: str = "auto", precision: str = "auto",
           threads: int | None = None, device: str = "auto", verify: bool = True) -> Selection:  # fmt: skip
    """Pick the variant to run on this host and say why (see the module docstring)."""
    backend = canonical_name(backend) if backend != "auto" else backend
    precision = precision.strip().lower()  # "FP32" is fp32, as "ONNX" is onnx
    found, backends = _candidates(bundle, backend, precision)
    if device != "auto":
        backends = _offering(device, [b for b in backends if any(v.backend == b for v in found)])
        found = [v for v in found if v.backend in backends]
    ver = _Verifier(bundle, threads, device, verify)
    if backend != "auto" and precision != "auto":
        first = min(found, key=lambda v: precision_rank(v.precision))
        if not verify:  # the opt-out: run what was asked for, and say what is known of it
            known = "" if first.passed or first.is_reference else (
                f"; its gate FAILED at conversion ({first.gate.get('reason')})")  # fmt: skip
            return ver.done(first, "explicitly requested" + known + _verified_note(ver, first))
        if not ver.ok(first):
            raise refusal(ver.statuses.get(first.id) or status_from_conversion(first))
        return ver.done(first, "explicitly requested" + _verified_note(ver, first))
    picked = choose(bundle, found, backends, threads, device, usable=ver.ok, towers=ver.towers,
                    release=ver.release, may_run=ver.may_run)  # fmt: skip
    if picked is None:
        raise _none_usable(bundle, found, ver)
    variant, reason = picked
    if backend != "auto":
        reason = f"requested backend {backend}; {reason}"
    return ver.done(variant, reason + _verified_note(ver, variant) + _left_out(ver, found, variant))


def _verified_note(ver: _Verifier, v: Variant) -> str:
    st = ver.statuses.get(v.id)
    if st is None:
        return "; on-device check skipped (verify=False)" if not ver.verify else ""
    return f"; {st.reason}" + (" (cached)" if st.cached else "")


def _left_out(ver: _Verifier, found: list[Variant], chosen: Variant) -> str:
    """The variants not served because they are known not to be usable here, by state, so
    a reason like "the only variant ..." says what became of the others (``edgeclip info``
    has each one's own reason)."""
    by_state: dict[str, list[Status]] = {}
    for v in found:
        st = ver.statuses.get(v.id)
        if v.id != chosen.id and st is not None and not st.usable:
            by_state.setdefault(st.state, []).append(st)
    parts = []
    for state, sts in by_state.items():
        reasons = {st.reason for st in sts}
        why = sts[0].reason if len(reasons) == 1 and state == "unverified" else (
            "`edgeclip info BUNDLE` says why")  # fmt: skip
        parts.append(f"{state}: {', '.join(st.variant.id for st in sts)} ({why})")
    return f"; left out, {'; '.join(parts)}" if parts else ""


def status_from_conversion(v: Variant) -> Status:
    """A status for a variant refused without running it (its conversion gate failed)."""
    return Status(v, "failed", f"failed its gate at conversion: {v.gate.get('reason')}")


def verify_all(bundle: Bundle, threads: int | None = None, device: str = "auto") -> list[Status]:
    """The on-device status of every variant whose backend is installed (checks run once)."""
    check_threads(threads)  # a bad count would fail every check, and the verdicts are cached
    ver, installed = _Verifier(bundle, threads, device, True), set(available_backends())
    out = []
    for v in bundle.variants:
        if v.backend not in installed:
            out.append(Status(v, "unverified", _not_installed(v.backend)))
            continue
        ver.ok(v)
        out.append(ver.statuses[v.id])
    for d in bundle.manifest.get("variants", []):
        if d.get("id") in bundle.damaged:
            why = "; ".join(bundle.damaged[d["id"]])
            out.append(Status(Variant.from_dict(d), "failed",
                              f"its files are damaged ({why}); re-download or re-convert the bundle"))  # fmt: skip
    return out


def _not_installed(backend: str) -> str:
    """Why a variant of ``backend`` is not checked here, with the install line when there is one."""
    try:
        get_backend(backend)
    except BackendUnavailableError as exc:
        return f"not checked here: {exc}"
    except InputError:
        return f"not checked here: this edgeclip has no backend {backend!r} (a newer one may)"
    return f"backend {backend} is not installed here"


def check_threads(threads: object) -> None:
    """``threads`` None, 0 (the runtime's default: one per core) or a positive whole number."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise InputError(f"threads must be a positive integer, 0 or None (the runtime's default: "
                         f"one per core), got {threads!r}.", param="threads")  # fmt: skip
