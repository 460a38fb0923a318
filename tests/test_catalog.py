"""The one description of each backend agrees with the packaging: every extra it names exists in
setup.cfg and installs what the backend needs."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from edgeclip.backends import catalog

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    raw = {k: [x.strip() for x in v.splitlines() if x.strip() and not x.strip().startswith("#")]
           for k, v in cfg["options.extras_require"].items()}  # fmt: skip

    def expand(name: str) -> set[str]:
        out = set()
        for req in raw[name]:
            inner = re.fullmatch(r"edgeclip\[([^\]]+)\]", req)
            if inner:
                for part in inner.group(1).split(","):
                    out |= expand(part.strip())
            else:
                out.add(re.split(r"[<>=!\[ ]", req)[0].lower())
        return out

    return {name: expand(name) for name in raw}


def test_every_backend_extra_installs_its_runtime_and_converter():
    extras = _extras()
    for spec in catalog.SPECS:
        assert spec.extra in extras, spec.name
        assert spec.package in extras[spec.extra], (spec.name, spec.extra)
        assert spec.convert_extra in extras, spec.name
        for _, pip_name in spec.convert_deps:
            assert pip_name in extras[spec.convert_extra], (spec.name, pip_name)


def test_registries_are_derived_from_the_catalog():
    from converters import variants
    from edgeclip import backends

    assert list(backends.BACKENDS) == [s.name for s in catalog.SPECS]
    assert variants.BACKENDS == catalog.PREFERENCE and variants.PRECISIONS == catalog.PRECISIONS
    for (backend, precision), ref in variants.REGISTRY.items():
        assert precision in catalog.PRECISIONS and backend in catalog.BY_NAME
        assert callable(variants.get_builder(backend, precision)), ref
    for name, spec in catalog.BY_NAME.items():
        try:
            backend = backends.get_backend(name)
        except ImportError:  # BackendUnavailableError: not installed in this run
            continue
        assert (backend.name, backend.extra, backend.formats) == (spec.name, spec.extra,
                                                                   spec.formats)  # fmt: skip
