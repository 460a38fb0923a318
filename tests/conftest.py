"""Shared, session-scoped fixtures: random CLIP checkpoints and the bundles converted from them.

Each is built once per test session, only when a test asks for it (the TinyCLIP-8M-shaped ones
cost a few seconds and ~190 MB, so only request them where the real shape matters). They need
the ``convert`` extra (torch, transformers, onnx, onnxruntime) and are skipped without it.
Treat them as read-only: copy a bundle (``shutil.copytree``) before altering it.

Names: ``{micro,odd,tinyclip8m}_hf_checkpoint`` (HF dir, safetensors), ``micro_hf_bin_checkpoint``
(HF dir, pytorch_model.bin), ``{micro,odd,tinyclip8m}_open_clip_checkpoint`` (``.pt`` path, its
``open_clip_config.json`` beside it) and ``{micro,odd,tinyclip8m}_bundle`` (bundle dirs).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _need_convert_stack() -> None:
    for mod in ("torch", "transformers", "safetensors", "onnx", "onnxruntime"):
        pytest.importorskip(
            mod, reason=f"{mod} is needed to build checkpoint fixtures (extra: convert)"
        )


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory) -> Path:
    """One directory under pytest's tmp dir holding every generated checkpoint and bundle."""
    return tmp_path_factory.mktemp("edgeclip-fixtures")


def _checkpoint(root: Path, arch: str, fmt: str) -> Path:
    _need_convert_stack()
    from converters.fixtures import write_random_checkpoint

    return write_random_checkpoint(root / f"{arch}-{fmt}", arch=arch, fmt=fmt, seed=0)


def _bundle(root: Path, checkpoint: Path, name: str) -> Path:
    from converters.bundle_writer import convert

    return convert(checkpoint, root / f"{name}-bundle", name=name, progress=False)


@pytest.fixture(scope="session")
def micro_hf_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "micro", "hf")


@pytest.fixture(scope="session")
def micro_hf_bin_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "micro", "hf-bin")


@pytest.fixture(scope="session")
def micro_open_clip_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "micro", "open_clip")


@pytest.fixture(scope="session")
def micro_bundle(fixture_root, micro_hf_checkpoint) -> Path:
    return _bundle(fixture_root, micro_hf_checkpoint, "micro")


@pytest.fixture(scope="session")
def odd_hf_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "odd", "hf")


@pytest.fixture(scope="session")
def odd_open_clip_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "odd", "open_clip")


@pytest.fixture(scope="session")
def odd_bundle(fixture_root, odd_hf_checkpoint) -> Path:
    return _bundle(fixture_root, odd_hf_checkpoint, "odd")


@pytest.fixture(scope="session")
def tinyclip8m_hf_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "tinyclip-8m", "hf")


@pytest.fixture(scope="session")
def tinyclip8m_open_clip_checkpoint(fixture_root) -> Path:
    return _checkpoint(fixture_root, "tinyclip-8m", "open_clip")


@pytest.fixture(scope="session")
def tinyclip8m_bundle(fixture_root, tinyclip8m_hf_checkpoint) -> Path:
    return _bundle(fixture_root, tinyclip8m_hf_checkpoint, "tinyclip-8m")


@pytest.fixture(scope="module")
def micro_model(micro_bundle):
    """The micro bundle loaded in this process: what a served answer is compared with."""
    import edgeclip

    return edgeclip.load(str(micro_bundle))


@pytest.fixture(scope="module")
def micro_server(micro_bundle, tmp_path_factory):
    """``edgeclip serve`` on the micro bundle, on 127.0.0.1, for one test module."""
    from test_serve_helpers import ServeProcess

    with ServeProcess(micro_bundle, "--idle-ttl", "0", log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: tiny models gain nothing from a second one on 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A random ``micro-teacher`` CLIP saved as a transformers folder (the distillation tests')."""
    from edgeclip.distill import students as S
    from edgeclip.distill.export import save_clip_dir

    d = tmp_path_factory.mktemp("teacher")
    save_clip_dir(S.build_model(S.load_arch("micro-teacher"), seed=7), d)
    return d


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium with a profile of its own (the web-page tests)."""
    from test_serve_helpers import Chromium

    b = Chromium(tmp_path / "profile")
    yield b
    b.close()
