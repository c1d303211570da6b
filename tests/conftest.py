"""Shared fixtures: sample models exported once per test session."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config) -> None:
    _reuse_the_exporters_op_registry()


def _reuse_the_exporters_op_registry() -> None:
    """torch's dynamo exporter rebuilds its table of ONNX functions on every export (about
    0.5 s, a third of a tiny model's export); the table depends only on the opset and the
    installed packages, so the tests build it once per process and give every export its own
    copy (an export may register custom ops into it). What is exported does not change."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # no torch (or another exporter): nothing to reuse
        return
    cls = _registration.ONNXRegistry
    build = cls.from_torchlib.__func__
    built: dict[int, object] = {}

    def from_torchlib(klass, opset_version=_registration._constants.TORCHLIB_OPSET):
        if opset_version not in built:
            built[opset_version] = build(klass, opset_version)
        copy = klass()
        copy._opset_version = built[opset_version]._opset_version
        copy.functions = {k: list(v) for k, v in built[opset_version].functions.items()}
        return copy

    cls.from_torchlib = classmethod(from_torchlib)


class SampleCache:
    """Exports sample models on first use: (family, size, exporter, trained) -> path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[tuple, Path] = {}

    def get(self, family: str, size: str, exporter: str, source: bool = False) -> Path:
        """A sample model. ``source=True``: the base size with perturbed weights (no two tensors
        equal, as after training; seed 0). Otherwise a freshly initialized model (seed 1), whose
        identical tensors the exporters deduplicate."""
        key = (family, size, exporter, source)
        if key not in self._done:
            from samples.export import export
            from samples.models import build, example_input, perturb

            model = build(family, size, seed=0 if source else 1)
            if source:
                perturb(model, seed=0)
            path = self.root / exporter / f"{family}-{size}{'-src' if source else ''}.onnx"
            export(model, example_input(family), path, exporter)
            self._done[key] = path
        return self._done[key]


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> SampleCache:
    return SampleCache(tmp_path_factory.mktemp("samples"))


def run_onnx(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def sample_feeds(family: str, path: Path | str) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from samples.models import example_input

    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    return {name: example_input(family, batch=3, seed=5).numpy()}


def small_vit(dim: int, depth: int, seed: int, trained: bool = False):
    """The sample ViT (4 heads, 10 classes) in eval mode; ``trained``: parameters perturbed as
    after training (non-zero biases, norm scales not all ones)."""
    import torch

    from samples.models import FAMILIES, ViTConfig, perturb

    torch.manual_seed(seed)
    m = FAMILIES["vit"][0](ViTConfig(dim=dim, depth=depth, heads=4, classes=10)).eval()
    return perturb(m, seed=seed) if trained else m


def file_digests(*paths: Path) -> dict[str, str]:
    """sha256 of each model file and its external data file, if any."""
    out = {}
    for p in paths:
        for f in (Path(p), Path(str(p) + ".data")):
            if f.exists():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and much faster on a busy machine."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pair(tmp_path):
    """A small MLP-stack source (width 16, 4 blocks) and target (width 8, 6 blocks)."""
    import onnx

    from tests.graphs import mlp_stack

    src, tgt = tmp_path / "src.onnx", tmp_path / "tgt.onnx"
    onnx.save(mlp_stack(16, 4, seed=0), src)
    onnx.save(mlp_stack(8, 6, seed=1), tgt)
    return src, tgt


def initializer_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """Every initializer of an ONNX file, by name."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="session")
def vits(tmp_path_factory) -> Path:
    """A trained-like sample ViT d64/L4 (``s.onnx``) and fresh targets: the same size
    (``same``), narrower and shallower (``shrink``), wider and deeper (``grow``)."""
    import torch

    from samples.export import export

    d = tmp_path_factory.mktemp("vits")
    x = torch.zeros(2, 1, 8, 8)
    export(small_vit(64, 4, 0, trained=True), x, d / "s.onnx")
    export(small_vit(64, 4, 1), x, d / "same.onnx")
    export(small_vit(32, 2, 2), x, d / "shrink.onnx")
    export(small_vit(96, 6, 3), x, d / "grow.onnx")
    return d
