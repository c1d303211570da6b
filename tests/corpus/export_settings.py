"""Which torch.onnx.export settings keep a module's parameters readable back by name.

For every corpus family, a fresh module (seed 1, as a target is) is exported three ways: the
dynamo exporter at its defaults, the dynamo exporter with ``optimize=False`` (what
``front_onnx.torch.transfer_module`` uses), and the legacy exporter (``dynamo=False``) at its
defaults. For each export it counts the module's parameters that ``front_onnx.weights`` names
with the module's own shape, and the BatchNormalization nodes left in the graph.

    python -m tests.corpus.export_settings [family ...]      # about 2 minutes on 2 cores
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

from tests.corpus.build import FAMILIES, _quiet, build_module, example_inputs, export


def measure(name: str, setting: str, folder: Path) -> str:
    import torch

    import front_onnx
    from front_onnx.torch.modules import export_module

    family = FAMILIES[name]
    module = build_module(family, "same")
    path = folder / f"{name}-{setting}.onnx"
    with _quiet():
        if setting == "optimize=False":
            feeds = {n: torch.from_numpy(v) for n, v in example_inputs(family).items()}
            export_module(module, feeds, path)
        else:
            export(module, family, "dynamo" if setting == "dynamo" else "legacy", path)
        nw = front_onnx.weights(path)
    params = dict(module.named_parameters())
    ok = [n for n, p in params.items() if n in nw.tensors and tuple(nw.tensors[n].shape) == tuple(p.shape)]
    absent = [n for n in params if n not in nw.tensors]
    shape = [n for n in params if n in nw.tensors and n not in ok]
    bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path), load_external_data=False).graph.node)
    return (f"| {name} | {setting} | {len(ok)}/{len(params)} | {len(absent)} {', '.join(absent[:2])} | "
            f"{len(shape)} {', '.join(shape[:2])} | {bn} |")


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(FAMILIES)
    print("| family | export | parameters named, right shape | no value | other shape | BatchNormalization nodes |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for setting in ("dynamo", "optimize=False", "legacy"):
                print(measure(name, setting, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
