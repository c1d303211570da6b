"""Export sample models to ONNX with torch's two exporters (dynamo and legacy)."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from samples.models import build, example_input

EXPORTERS = ("dynamo", "legacy")


def export(model: torch.nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "dynamo") -> Path:
    """Export `model` to `path` with the given exporter; quiet unless it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_name = "input_ids" if example.dtype == torch.int64 else "pixels"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[input_name], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        elif exporter == "legacy":
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[input_name], output_names=["logits"], opset_version=17,
                              dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}})
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    return path


def export_sample(family: str, size: str, exporter: str, path: str | Path, seed: int = 0) -> Path:
    """Build one sample model and export it."""
    return export(build(family, size, seed), example_input(family), path, exporter)


if __name__ == "__main__":
    import argparse

    from samples.models import FAMILIES, SIZES

    p = argparse.ArgumentParser(description="Export every sample family, size and exporter.")
    p.add_argument("out", type=Path)
    args = p.parse_args()
    for fam in FAMILIES:
        for size in SIZES:
            for exp in EXPORTERS:
                print(export_sample(fam, size, exp, args.out / exp / f"{fam}-{size}.onnx"))
