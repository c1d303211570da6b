"""Build the Keras side-branch corpus: a small HED-like edge detector exported with tf2onnx.

Not part of the test run: it needs TensorFlow, which the project does not depend on. Run it
with a separate environment, from the repository root::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0
    /tmp/tfenv/bin/python tests/corpus/keras_side_branches.py

It writes ``tests/corpus/keras/`` (``manifest.json`` records the versions and the node
order of the side branches in each file); ``tests/test_keras_branches.py`` reads those files
and needs no TensorFlow.

The design (VGG-like, as HED): three stages of 2, 2 and 3 3x3 convolutions with a 2x2 max
pool between them; a 1x1 convolution to one channel reads the end of each stage (a *side
branch*), is upsampled to the input size and is a graph output; the side outputs are
concatenated and fused by a 1x1 convolution, the last graph output. Outputs in this order:
``side0``, ``side1``, ``side2``, ``fused``.

Models (input 1x32x32x3, NHWC as Keras has it; tf2onnx at its defaults):

- ``source.onnx``: widths 8/16/32, "trained-like": every kernel perturbed, every bias
  non-zero. Side branch k's kernel is planted at ``k + 1`` (plus small noise) and the fuse
  kernel at ``-1``, so the branch a written kernel came from can be told by its mean;
- ``half.onnx``: widths 4/8/16, fresh (Keras' initializers: zero biases, which tf2onnx
  drops);
- ``same.onnx``: widths 8/16/32, fresh (for the identity transfer).

The code is the same for all three, yet tf2onnx emits the side branches in another order:
in the source (convolutions with a bias) last to first, after the backbone; in the fresh
targets (no bias) each right after its stage. ``manifest.json`` records the order found
in each file (``side_order``). A rebuild gives the same weights and graphs, but tf2onnx
numbers some generated constants (``new_shape__64``) differently from run to run, so the
files' hashes change.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from tensorflow import keras

OUT = Path(__file__).resolve().parent / "keras"
STAGES = (2, 2, 3)            # convolutions per stage
SIZE = 32                     # input height and width
PLANTED = {"side0": 1.0, "side1": 2.0, "side2": 3.0, "fuse": -1.0}


def build(width: int) -> keras.Model:
    """The HED-like model, its first stage ``width`` channels wide."""
    x = inp = keras.Input((SIZE, SIZE, 3), name="image")
    ends = []
    for s, n in enumerate(STAGES):
        if s:
            x = keras.layers.MaxPooling2D(2, name=f"pool{s}")(x)
        for c in range(n):
            x = keras.layers.Conv2D(width * 2 ** s, 3, padding="same", activation="relu",
                                    name=f"stage{s}_conv{c}")(x)
        ends.append(x)
    ordered = []
    for s, end in enumerate(ends):
        y = keras.layers.Conv2D(1, 1, name=f"side{s}")(end)
        if s:
            y = keras.layers.UpSampling2D(2 ** s, interpolation="bilinear", name=f"up{s}")(y)
        ordered.append(y)
    fused = keras.layers.Conv2D(1, 1, name="fuse")(keras.layers.Concatenate(name="cat")(ordered))
    outs = [keras.layers.Activation("linear", name=f"side{s}_out")(y) for s, y in enumerate(ordered)]
    return keras.Model(inp, outs + [fused], name="hed")


def trained_like(model: keras.Model, seed: int = 0) -> None:
    """Perturb every weight; biases non-zero; plant a constant in each side branch."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        kernel, bias = ws
        if layer.name in PLANTED:
            kernel = PLANTED[layer.name] + 0.05 * rng.standard_normal(kernel.shape)
        else:
            kernel = kernel + 0.02 * rng.standard_normal(kernel.shape) * (kernel.std() + 0.02)
        bias = 0.1 * rng.standard_normal(bias.shape)
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def export(model: keras.Model, path: Path) -> None:
    spec = (tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image"),)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        tf2onnx.convert.from_keras(model, input_signature=spec, output_path=str(tmp_path))
        proto = onnx.load(str(tmp_path))
    # the producer string and doc strings carry nothing machine-specific; keep the file as written
    path.write_bytes(proto.SerializeToString())


def side_order(path: Path) -> list[str]:
    """The side-branch and fuse convolutions in the order of the ONNX node list."""
    proto = onnx.load(str(path))
    out = []
    for n in proto.graph.node:
        if n.op_type == "Conv":  # node names vary (``Conv__54``); the kernel's name keeps the layer's
            out.extend(key for key in ("side0", "side1", "side2", "fuse") if f"/{key}_" in n.input[1])
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    models = {}
    keras.utils.set_random_seed(0)
    src = build(8)
    trained_like(src)
    models["source"] = src
    keras.utils.set_random_seed(1)
    models["half"] = build(4)
    keras.utils.set_random_seed(2)
    models["same"] = build(8)
    manifest = {
        "about": "tests/corpus/keras_side_branches.py; regenerate with "
                 "`/tmp/tfenv/bin/python tests/corpus/keras_side_branches.py` (TensorFlow venv, see its docstring)",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "planted": PLANTED,
        "outputs": ["side0", "side1", "side2", "fused"],
        "models": {},
    }
    for name, model in models.items():
        path = OUT / f"{name}.onnx"
        export(model, path)
        manifest["models"][name] = {
            "path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "widths": [int(model.get_layer(f"stage{s}_conv0").filters) for s in range(len(STAGES))],
            "side_order": side_order(path),
        }
        print(name, path.stat().st_size, "bytes; side convs in node order:", manifest["models"][name]["side_order"])
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
