"""What a grown ResNet computes right after the transfer: test accuracy and the logits'
relative error against the source, before any training, for growth in width only, depth
only and both (docs/results.md, "Growth that keeps the source's function").

    .venv/bin/python benchmarks/growth_init.py [--part cnn-grow|cnn-hard-grow] [--method M] [--depth D]

Uses the convergence benchmark's cached trained source (``bench-out/convergence/sources``,
trained there on first use) and fresh targets of seed 1000.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402

import convergence as C  # noqa: E402
import front_onnx  # noqa: E402
from samples.models import ResNetConfig  # noqa: E402

TARGETS = {"width": ResNetConfig(widths=(24, 48, 96), depths=(2, 2, 2)),
           "depth": ResNetConfig(widths=(16, 32, 64), depths=(3, 3, 3)),
           "both": ResNetConfig(widths=(24, 48, 96), depths=(3, 3, 3))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="cnn-grow", choices=("cnn-grow", "cnn-hard-grow"))
    ap.add_argument("--method", default=front_onnx.api.DEFAULT_METHOD)
    ap.add_argument("--depth", default=front_onnx.api.DEFAULT_DEPTH)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "convergence")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    s = next(x for x in C.settings(False, minilm=False) if x.name == args.part)
    source, source_onnx, _ = C.get_source(s, args.out, print)
    _, _, x_te, y_te = C.task_data(s.target_task)

    def run(model: torch.nn.Module) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            out = model.eval()(x_te)
        return float((out.argmax(1) == y_te).float().mean()), out

    acc, ref = run(source)
    print(f"{args.part}: source accuracy {acc:.3f}; --method {args.method} --depth {args.depth}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in TARGETS.items():
            target = C.make_model("resnet", cfg, 1000)
            path = C.export_model(C.make_model("resnet", cfg, 1000), s, cfg, Path(tmp) / f"{name}.onnx", "dynamo")
            out = Path(tmp) / f"{name}-out.onnx"
            front_onnx.transfer(source_onnx, path, out, method=args.method, depth=args.depth)
            C.load_onnx_weights(target, out)
            acc, logits = run(target)
            err = float((logits - ref).norm() / ref.norm())
            print(f"  {name:5s} {cfg.widths} x {cfg.depths}: accuracy {acc:.3f}, logits' relative error {err:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
