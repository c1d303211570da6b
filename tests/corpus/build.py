"""Build the corpus: tiny HF transformers and timm models, exported the way people export them.

Every family is built from a config (no hub access) in four roles:

- ``source``: seed 0, then every parameter perturbed in torch before the export
  (``p += 0.02 * randn * (p.std() + 0.02)``) and BatchNorm running statistics set to
  non-trivial values, so no tensor is zero, one or equal to another, as after training;
- ``same``: the source's architecture, freshly initialized (seed 1);
- ``shrink``: narrower AND shallower (width halved, heads halved at a fixed head size of 8,
  fewer blocks: one block per stage for most families, 2 of 3 for llama, timm vit and
  ConvNeXt's third stage), fresh;
- ``grow``: wider AND deeper (width x1.25 to x1.5, one more block per stage where a stage
  has several), fresh.

Widths are tiny (hidden 32, vocabulary 64, images 32x32, batch 2, sequence 8) so that the
whole corpus builds in about two minutes and the files stay small.

Each model is exported with both torch exporters at their defaults (only input and output
names are given): ``torch.onnx.export(model, args, path)`` (dynamo; external data
``.onnx.data``) and ``torch.onnx.export(..., dynamo=False)`` (legacy).

For every exported model the builder decides, from the torch module and independently of
front_onnx, which initializers are parameters (``classify``) and writes it to the manifest:

- ``parameter``: the bytes of a trainable parameter, possibly transposed, reshaped or
  broadcast (``expand``), or a Conv kernel / bias into which an eval-mode BatchNorm was folded;
- ``derived``: computed from a parameter but not a layout view of it (a gathered
  relative-position bias, a slice ``wpe[:T]``): its values are values of a parameter;
- ``constant``: everything else (masks, rotary tables, shapes, indices, aranges).

One change is made to the exported files: the dynamo exporter's per-node Python stack
traces (``pkg.torch.onnx.stack_trace`` metadata, absolute paths of the build machine) are
removed from the .onnx file, which makes the files smaller and the same on every machine.

The example inputs are stored as ``<family>/inputs/<name>.npy``. The manifest
(``models/manifest.json``) holds, per model: family, role, exporter, config, inputs,
outputs, sha256 of every file and the classification; and the library versions used.

    python -m tests.corpus.build              # rebuild everything (about 2 minutes on 2 cores)
    python -m tests.corpus.build vit bert     # only some families (the manifest is updated)
    python -m tests.corpus.build --check      # rebuild into a temporary folder and compare hashes
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import itertools
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
MANIFEST = "manifest.json"
ROLES = ("source", "same", "shrink", "grow")
EXPORTERS = ("dynamo", "legacy")
BATCH, SEQ, IMG, VOCAB, CLASSES = 2, 8, 32, 64, 10


# ----------------------------------------------------------------------------- families

@dataclass
class Family:
    name: str
    library: str                       # "transformers" or "timm"
    make: Callable[[dict], Any]        # config -> torch module
    configs: dict[str, dict]           # role -> config (source and same share one)
    args: tuple[str, ...]              # forward's positional inputs, in order
    outputs: tuple[str, ...]
    note: str = ""


def _hf(cls_name: str, config_name: str) -> Callable[[dict], Any]:
    def make(cfg: dict):
        import transformers

        config = getattr(transformers, config_name)(**cfg, use_cache=False)
        return getattr(transformers, cls_name)(config)
    return make


def _timm(path: str) -> Callable[[dict], Any]:
    def make(cfg: dict):
        import importlib

        mod, cls = path.rsplit(".", 1)
        return getattr(importlib.import_module(mod), cls)(**cfg)
    return make


def _resnet(cfg: dict):
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, **cfg)


# EfficientNet-B0's architecture (timm.models.efficientnet._gen_efficientnet) with the
# compound-scaling multipliers as arguments and a narrower head than round(1280 * width).
EFFICIENTNET_B0 = [
    ["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s2_e6_c24_se0.25"], ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"], ["ir_r3_k5_s1_e6_c112_se0.25"], ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]


def _efficientnet(cfg: dict):
    from functools import partial

    import torch.nn as nn
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet
    from timm.layers import get_act_layer

    round_chs = partial(round_channels, multiplier=cfg["width"], divisor=4)
    return EfficientNet(block_args=decode_arch_def(EFFICIENTNET_B0, cfg["depth"]), num_features=cfg["num_features"],
                        stem_size=32, round_chs_fn=round_chs, act_layer=get_act_layer("swish"),
                        norm_layer=nn.BatchNorm2d, num_classes=CLASSES)


def _llm(d: int, layers: int) -> dict:
    """Grouped-query attention: head size 8, half as many key/value heads as query heads."""
    heads = d // 8
    return dict(vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=32)


# (width, blocks) of source/same, shrink and grow for the transformers with head size 8
WIDTH_DEPTH = ((32, 2), (16, 1), (40, 3))


def _roles(base: dict, shrink: dict, grow: dict) -> dict[str, dict]:
    return {"source": base, "same": base, "shrink": shrink, "grow": grow}


def _vit_cfg(d: int, depth: int) -> dict:
    return dict(img_size=IMG, patch_size=8, embed_dim=d, depth=depth, num_heads=d // 8, mlp_ratio=2.0,
                num_classes=CLASSES)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert", "transformers", _hf("BertForSequenceClassification", "BertConfig"), _roles(*[
        dict(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, num_attention_heads=d // 8,
             intermediate_size=2 * d, max_position_embeddings=16, num_labels=3)
        for d, n in WIDTH_DEPTH]), ("input_ids", "attention_mask"), ("logits",)),
    Family("gpt2", "transformers", _hf("GPT2LMHeadModel", "GPT2Config"), _roles(*[
        dict(vocab_size=VOCAB, n_positions=16, n_embd=d, n_inner=2 * d, n_layer=n, n_head=d // 8, bos_token_id=0,
             eos_token_id=0)
        for d, n in WIDTH_DEPTH]), ("input_ids", "attention_mask"), ("logits",)),
    Family("llama", "transformers", _hf("LlamaForCausalLM", "LlamaConfig"),
           _roles(_llm(32, 3), _llm(16, 2), _llm(48, 4)),
           ("input_ids", "attention_mask"), ("logits",),
           "grouped-query attention: 2 key/value heads for 4 query heads; 3 layers, so shrinking keeps 2"),
    Family("qwen2", "transformers", _hf("Qwen2ForCausalLM", "Qwen2Config"),
           _roles(_llm(32, 2), _llm(16, 1), _llm(48, 3)),
           ("input_ids", "attention_mask"), ("logits",), "grouped-query attention with q/k/v biases"),
    Family("t5", "transformers", _hf("T5ForConditionalGeneration", "T5Config"), _roles(*[
        dict(vocab_size=VOCAB, d_model=d, d_kv=8, d_ff=2 * d, num_layers=n, num_decoder_layers=n, num_heads=d // 8,
             relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
             pad_token_id=0)
        for d, n in WIDTH_DEPTH]), ("input_ids", "attention_mask", "decoder_input_ids"),
        ("logits", "encoder_last_hidden_state")),
    Family("hf_vit", "transformers", _hf("ViTForImageClassification", "ViTConfig"), _roles(*[
        dict(image_size=IMG, patch_size=8, hidden_size=d, num_hidden_layers=n, num_attention_heads=d // 8,
             intermediate_size=2 * d, num_labels=CLASSES)
        for d, n in WIDTH_DEPTH]), ("pixel_values",), ("logits",)),
    Family("vit", "timm", _timm("timm.models.vision_transformer.VisionTransformer"),
           _roles(_vit_cfg(32, 3), _vit_cfg(16, 2), _vit_cfg(40, 4)), ("x",), ("logits",),
           "3 blocks, so shrinking keeps 2"),
    Family("deit", "timm", _timm("timm.models.deit.VisionTransformerDistilled"),
           _roles(*[_vit_cfg(d, n) for d, n in WIDTH_DEPTH]), ("x",), ("logits",),
           "class and distillation tokens, two heads averaged in eval mode"),
    Family("resnet", "timm", _resnet, _roles(*[
        dict(layers=n, channels=c, num_classes=CLASSES)
        for n, c in (((2, 2, 2, 2), (8, 8, 16, 16)), ((1, 1, 1, 1), (4, 4, 8, 8)), ((3, 3, 3, 3), (10, 10, 20, 20)))]),
        ("x",), ("logits",), "BasicBlock; eval BatchNorm folded into the convs by both exporters; the 7x7 stem "
                             "keeps timm's 64 channels in every role"),
    Family("convnext", "timm", _timm("timm.models.convnext.ConvNeXt"), _roles(*[
        dict(depths=n, dims=c, num_classes=CLASSES)
        for n, c in (((1, 1, 3, 1), (8, 16, 24, 32)), ((1, 1, 2, 1), (4, 8, 12, 16)), ((1, 1, 4, 1), (10, 20, 30, 40)))]),
        ("x",), ("logits",), "depthwise 7x7 convs (groups = channels), layer scale; 1-block stages and a 3-block one"),
    Family("efficientnet", "timm", _efficientnet, _roles(
        dict(width=0.125, depth=0.5, num_features=48), dict(width=0.0625, depth=0.25, num_features=24),
        dict(width=0.15625, depth=0.6, num_features=56)),
        ("x",), ("logits",), "EfficientNet-B0 compound scaling: 1-block stages become 2-block stages"),
    Family("swin", "timm", _timm("timm.models.swin_transformer.SwinTransformer"), _roles(*[
        dict(img_size=IMG, patch_size=4, window_size=4, embed_dim=d, depths=n, num_heads=h, mlp_ratio=2.0,
             num_classes=CLASSES)
        for d, n, h in ((16, (2, 2), (2, 4)), (8, (1, 1), (1, 2)), (24, (3, 2), (3, 6)))]),
        ("x",), ("logits",), "shifted windows (window mask) and relative-position biases"),
]}


def example_inputs(family: Family) -> dict[str, np.ndarray]:
    """The family's example inputs (the same for every role and exporter), by input name."""
    rng = np.random.default_rng(1234)
    out: dict[str, np.ndarray] = {}
    for name in family.args:
        if name in ("input_ids", "decoder_input_ids"):
            out[name] = rng.integers(1, VOCAB, (BATCH, SEQ), dtype=np.int64)
        elif name == "attention_mask":
            out[name] = np.ones((BATCH, SEQ), np.int64)   # explicit: transformers 5 LLMs need it (aten::diff)
        else:
            out[name] = rng.standard_normal((BATCH, 3, IMG, IMG)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- models

def perturb(model, seed: int = 0) -> None:
    """As after training: every parameter moved off its initial value, BatchNorm statistics
    away from (0, 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g) * (p.std(unbiased=False) + 0.02))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def build_module(family: Family, role: str):
    import torch

    torch.manual_seed(0 if role == "source" else 1)
    model = family.make(copy.deepcopy(family.configs[role])).eval()
    if role == "source":
        perturb(model, seed=0)
    return model


@contextlib.contextmanager
def _quiet():
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("ignore")
            yield
    except Exception:
        sys.stderr.write(out.getvalue()[-4000:] + err.getvalue()[-4000:])
        raise


def export(model, family: Family, exporter: str, path: Path) -> None:
    """torch.onnx.export at its defaults; only names are given."""
    import torch

    feeds = {n: torch.from_numpy(v) for n, v in example_inputs(family).items() if n in family.args}
    first, rest = family.args[0], {n: feeds[n] for n in family.args[1:]}  # the others by name, as forward's order varies
    names = dict(input_names=list(family.args), output_names=list(family.outputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(model, (feeds[first],), str(path), kwargs=rest, **names)
        else:
            if family.library == "transformers":
                _bind_forward(model, family.args)
            torch.onnx.export(model, (feeds[first],), str(path), kwargs=rest, dynamo=False, **names)
    _strip_stack_traces(path)


def _bind_forward(model, args: tuple[str, ...]) -> None:
    """Give an HF model a forward that takes exactly ``args``, for the legacy exporter.

    The legacy exporter passes every forward parameter that has a default (its
    ``_decide_input_format``); the int default ``logits_to_keep=0`` of the causal LMs then
    becomes a graph input, a tensor, which HF uses as an *index*: the export returns the
    logits of position 0 only ([B, V]), another function than the dynamo export's [B, T, V].
    Module paths and parameter names do not change."""
    import inspect

    forward = type(model).forward

    def bound(*values, **named):
        return forward(model, **dict(zip(args, values)), **named)

    bound.__signature__ = inspect.Signature(
        [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in args])
    model.forward = bound


# Node metadata the dynamo exporter writes: Python stack traces with the absolute paths of
# the build machine's site-packages (about 40% of a graph's bytes, and different on every
# machine). The builder removes this one key, and only from the .onnx file (the external data
# file is left as exported); the module paths (`pkg.torch.onnx.name_scopes`, `namespace`,
# `class_hierarchy`) and everything else stay.
STRIPPED_METADATA = "pkg.torch.onnx.stack_trace"


def _strip_stack_traces(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    changed = False
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key != STRIPPED_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            changed = True
    if changed:
        onnx.save(model, str(path))   # external tensors keep their references; the .data file is not rewritten


# ----------------------------------------------------------------------------- classification

def _trivial(a: np.ndarray) -> bool:
    return a.size == 0 or bool(np.all(a == a.flat[0]))


def _squeezed(shape) -> list[int]:
    return sorted(int(d) for d in shape if d != 1)


def _layout_view(init: np.ndarray, p: np.ndarray) -> str:
    """How ``init`` is a layout view of parameter ``p`` ('' if it is not)."""
    if init.size != p.size:
        return ""
    if _trivial(p):   # all-equal values match anything of that size: require the same dims
        return "same values" if _trivial(init) and init.flat[0] == p.flat[0] and _squeezed(init.shape) == _squeezed(p.shape) else ""
    if p.ndim <= 5:
        for perm in itertools.permutations(range(p.ndim)):
            if np.array_equal(p.transpose(perm).ravel(), init.ravel()):
                return "reshape" if perm == tuple(range(p.ndim)) else f"transpose{perm}"
    if np.array_equal(np.sort(p.ravel()), np.sort(init.ravel())):
        return "permutation"
    return ""


def _expanded(init: np.ndarray, p: np.ndarray) -> str:
    if _trivial(p) or init.size <= p.size or init.size % p.size or init.size // p.size > 64:
        return ""
    rows = init.reshape(init.size // p.size, p.size)
    return "expand" if all(_layout_view(r, p) for r in rows) else ""


def _batchnorms(model) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, scale, shift) of every BatchNorm in eval mode."""
    import torch

    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            var = m.running_var.detach().double().numpy()
            scale = (m.weight.detach().double().numpy() if m.weight is not None else 1.0) / np.sqrt(var + m.eps)
            shift = (m.bias.detach().double().numpy() if m.bias is not None else 0.0) - m.running_mean.detach().double().numpy() * scale
            out.append((name, scale, shift))
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + float(np.abs(b).max()))))


def classify(model, onnx_path: Path) -> dict[str, dict]:
    """Per ONNX initializer of ``onnx_path``: its class (parameter / derived / constant) and
    what it was matched with, decided from the torch ``model`` alone."""
    import onnx
    from onnx import numpy_helper

    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    convs = {n: p for n, p in params.items() if p.ndim == 4}
    conv_bias = {n[: -len(".weight")]: params.get(n[: -len(".weight")] + ".bias") for n in convs}
    bns = _batchnorms(model)
    result: dict[str, dict] = {}
    proto = onnx.load(str(onnx_path))
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        info: dict[str, Any] = {"class": "constant"}
        result[t.name] = info
        if a.dtype.kind != "f" or a.size == 0:
            continue
        matches = [(n, h) for n, p in params.items() if (h := _layout_view(a, p) or _expanded(a, p))]
        if matches:
            info.update({"class": "parameter", "of": matches[0][0], "how": matches[0][1]})
            if len(matches) > 1:
                info["also"] = [n for n, _ in matches[1:]]
            continue
        folded = _folded(a, convs, conv_bias, bns)
        if folded:
            info.update({"class": "parameter", "of": folded[0], "how": folded[1]})
            continue
        derived = _derived(a, params)
        if derived:
            info.update({"class": "derived", "of": derived[0], "how": derived[1]})
    return result


def _folded(a, convs, conv_bias, bns) -> tuple[str, str] | None:
    """A Conv kernel or bias with an eval BatchNorm folded in: kernel * scale[o], bias * scale + shift."""
    a64 = a.astype(np.float64)
    for bn, scale, shift in bns:
        if a.ndim == 4 and a.shape[0] == len(scale):
            for n, w in convs.items():
                if w.shape == a.shape and not _trivial(w) and _close(a64, w * scale[:, None, None, None]):
                    return n, f"batchnorm {bn} folded"
        if a.ndim == 1 and a.shape[0] == len(scale):
            biases = [(n, b) for n, b in conv_bias.items() if b is not None and b.shape == a.shape] + [("", None)]
            for n, b in biases:
                if _close(a64, shift + (b * scale if b is not None else 0.0)):
                    return (f"{n}.bias" if n else f"{bn}.bias"), f"batchnorm {bn} folded into a conv bias"
    return None


def _derived(a: np.ndarray, params: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """Values taken from a parameter (a gather or slice): at least half of the elements and at
    least two distinct values are values of one non-trivial parameter."""
    for n, p in params.items():
        if _trivial(p) or p.dtype != a.dtype:
            continue
        hit = np.isin(a, p)
        if hit.mean() >= 0.5 and len(np.unique(a[hit])) >= 2:
            return n, f"gathered ({hit.mean():.0%} of the values)"
    return None


# ----------------------------------------------------------------------------- build

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import timm
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "numpy": np.__version__,
            "python": ".".join(map(str, sys.version_info[:3]))}


def _input_specs(path: Path) -> list[dict]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    names = {i.name for i in g.initializer}
    out = []
    for i in g.input:
        if i.name in names:
            continue
        tt = i.type.tensor_type
        out.append({"name": i.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                    "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]})
    return out


def build_family(family: Family, root: Path, log=print) -> list[dict]:
    import numpy.lib.format as npformat

    fam_dir = root / family.name
    if fam_dir.exists():
        shutil.rmtree(fam_dir)
    feeds = example_inputs(family)
    (fam_dir / "inputs").mkdir(parents=True)
    for name, value in feeds.items():
        with open(fam_dir / "inputs" / f"{name}.npy", "wb") as f:
            npformat.write_array(f, value, allow_pickle=False)
    entries = []
    for role in ROLES:
        for exporter in EXPORTERS:
            t0 = time.perf_counter()
            model = build_module(family, role)
            path = fam_dir / exporter / f"{role}.onnx"
            export(model, family, exporter, path)
            files = [path] + ([Path(str(path) + ".data")] if Path(str(path) + ".data").exists() else [])
            inputs = _input_specs(path)
            missing = [i["name"] for i in inputs if i["name"] not in feeds]
            if missing:
                raise RuntimeError(f"{path}: inputs without an example value: {missing}")
            inits = classify(model, path)
            entries.append({
                "family": family.name, "library": family.library, "role": role, "exporter": exporter,
                "path": path.relative_to(root).as_posix(), "files": {f.relative_to(root).as_posix(): _sha256(f) for f in files},
                "config": family.configs[role], "inputs": inputs, "outputs": list(family.outputs),
                "initializers": inits,
            })
            n = {c: sum(v["class"] == c for v in inits.values()) for c in ("parameter", "derived", "constant")}
            log(f"  {family.name:13s} {role:6s} {exporter:6s} {time.perf_counter() - t0:5.1f} s  "
                f"{sum(f.stat().st_size for f in files) / 1024:6.0f} KiB  {n}")
    return entries


def write_manifest(root: Path, entries: list[dict], seconds: dict[str, float]) -> None:
    fams = sorted({e["family"] for e in entries})
    manifest = {
        "about": "tests/corpus/build.py; regenerate with `python -m tests.corpus.build`",
        "versions": versions(),
        "builder_sha256": _sha256(Path(__file__)),
        "families": {f: {"library": FAMILIES[f].library, "note": FAMILIES[f].note, "args": list(FAMILIES[f].args),
                         "inputs": {n: f"{f}/inputs/{n}.npy" for n in example_inputs(FAMILIES[f])},
                         "input_sha256": {n: _sha256(root / f / "inputs" / f"{n}.npy") for n in example_inputs(FAMILIES[f])},
                         "build_seconds": round(seconds.get(f, 0.0), 1)}
                     for f in fams},
        "models": sorted(entries, key=lambda e: (e["family"], ROLES.index(e["role"]), e["exporter"])),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")) + "\n")


def load_manifest(root: Path = MODELS) -> dict:
    return json.loads((root / MANIFEST).read_text())


def build(names: list[str], root: Path = MODELS, log=print) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    old = load_manifest(root) if (root / MANIFEST).exists() else {"models": [], "families": {}}
    entries = [e for e in old["models"] if e["family"] not in names and e["family"] in FAMILIES]
    seconds = {f: v.get("build_seconds", 0.0) for f, v in old["families"].items() if f not in names}
    for name in names:
        t0 = time.perf_counter()
        entries += build_family(FAMILIES[name], root, log)
        seconds[name] = time.perf_counter() - t0
        log(f"{name}: {seconds[name]:.1f} s")
    write_manifest(root, entries, seconds)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*", help=f"default: all ({', '.join(FAMILIES)})")
    p.add_argument("--out", type=Path, default=MODELS)
    p.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare file hashes")
    args = p.parse_args(argv)
    names = args.families or list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
    t0 = time.perf_counter()
    if args.check:
        want = load_manifest(args.out)
        with tempfile.TemporaryDirectory() as tmp:
            build(names, Path(tmp))
            got = load_manifest(Path(tmp))
        a = {f: h for e in want["models"] if e["family"] in names for f, h in e["files"].items()}
        b = {f: h for e in got["models"] for f, h in e["files"].items()}
        for fam in names:
            a.update({f"{fam}/inputs/{n}": h for n, h in want["families"][fam]["input_sha256"].items()})
            b.update({f"{fam}/inputs/{n}": h for n, h in got["families"][fam]["input_sha256"].items()})
        a.update({f"{e['path']} classification": json.dumps(e["initializers"], sort_keys=True)
                  for e in want["models"] if e["family"] in names})
        b.update({f"{e['path']} classification": json.dumps(e["initializers"], sort_keys=True) for e in got["models"]})
        diff = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
        print(f"{len(a)} files compared; {len(diff)} differ" + "".join(f"\n  {f}" for f in diff))
        return 1 if diff else 0
    build(names, args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"built {len(names)} families in {time.perf_counter() - t0:.0f} s; {args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
