"""Write the sklearn-digits split of samples/train.py as files for `front-onnx refine` and
`front-onnx validate`: DIR/train.npz (key 'pixels', float32 [N, 1, 8, 8]), DIR/train-labels.npy
(int64 [N]), DIR/test.npz, DIR/test-labels.npy.

    python samples/digits_npz.py demo-out/digits
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samples.train import digits_data  # noqa: E402


def write(out: Path, seed: int = 0, name: str = "pixels") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = digits_data(seed)
    np.savez(out / "train.npz", **{name: x_tr.numpy()})
    np.save(out / "train-labels.npy", y_tr.numpy())
    np.savez(out / "test.npz", **{name: x_te.numpy()})
    np.save(out / "test-labels.npy", y_te.numpy())
    return [out / f for f in ("train.npz", "train-labels.npy", "test.npz", "test-labels.npy")]


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="pixels", help="the model's input name (default pixels)")
    for f in write(p.parse_args().out, p.parse_args().seed, p.parse_args().name):
        print(f)
