"""Build the deployment corpus: tiny models as deployment tools write them, not torch.onnx.export.

Families (``tests/corpus/deploy/<family>/<role>/model.onnx``), each in four roles:

- ``optimum_llama_past``: LlamaForCausalLM (GQA: 4 heads, 2 key/value heads, head size 16)
  exported by optimum-onnx, task ``text-generation-with-past`` (past key values as inputs,
  ``present.*`` as outputs);
- ``optimum_bert``: BertModel by optimum-onnx, task ``feature-extraction``;
- ``optimum_vit``: ViTModel (32x32 images, 3 channels, patch 8) by optimum-onnx, ``feature-extraction``;
- ``optimum_bert_o2``: the ``optimum_bert`` export optimized by optimum's ``ORTOptimizer`` with
  ``AutoOptimizationConfig.O2(disable_embed_layer_norm_fusion=False)`` (onnxruntime's transformer
  optimizer: fused ``EmbedLayerNormalization``, ``Attention``, ``SkipLayerNormalization``,
  ``BiasGelu``; the manifest lists the fused ops of each file). Optimum's O2 leaves the
  embedding unfused by default (``disable_embed_layer_norm_fusion=True``); onnxruntime's own
  ``optimize_model(model_type="bert")`` fuses it, and so does O2 with that option;
- ``genai_llama_fp32`` / ``genai_llama_int4``: a LlamaForCausalLM saved with ``save_pretrained``
  (plus a WordLevel tokenizer built offline) and converted by the onnxruntime-genai model
  builder, ``python -m onnxruntime_genai.models.builder -i <folder> -o <out> -p fp32|int4 -e cpu``
  (``GroupQueryAttention`` with rotary cos/sin caches, ``SkipSimplifiedLayerNormalization``,
  int4 weights in ``MatMulNBits``).

Roles, as in ``tests/corpus/build.py``: ``source`` = seed 0, then every parameter perturbed in
torch before the export (``p += 0.02 * randn * (p.std() + 0.02)``: no bias zero, no norm weight
one, as after training); ``same`` = the source's config, fresh (seed 1); ``shrink`` = hidden 32,
half the heads at head size 16, 1 layer, fresh; ``grow`` = hidden 96 (x1.5), 1.5x the heads,
3 layers, fresh. Source/same: hidden 64, 2 layers, intermediate 128, vocabulary 80, 64 positions.
(The vocabulary is 80, not 64: the genai builder takes any ``nn.Linear`` whose ``out_features``
equals the vocabulary size for the LM head, so the vocabulary must differ from every
projection width: with 64 it wired ``q_proj`` of layer 0 as the LM head.)

Example inputs (``<family>/inputs/<name>.npy``; batch 2, 8 new tokens; batch 1 for genai, whose
CPU GroupQueryAttention refuses a batch > 1 with several new tokens and a past): the LLMs get a past of
4 tokens, ``attention_mask`` ones over past + new (12), ``position_ids`` 4..11 (optimum only:
the genai graph computes positions from the mask), and ``past_key_values.<i>.key|value`` of
shape [batch, 3, 4, 16]: stored for the widest and deepest role (grow: 3 layers, 3 key/value
heads); a model takes ``past_key_values.<i>`` for its own layers and the leading entries of any
dimension its graph declares smaller (``slice_feeds``; tests/corpus/deploy_scoreboard.py does
the same). BERT: ``input_ids``, ``attention_mask`` (the last two tokens of the second row
masked), ``token_type_ids`` zeros. ViT: ``pixel_values`` [2, 3, 32, 32]. Every untouched model
runs on these in onnxruntime (checked by the builder and by tests/test_corpus_deploy.py).

Classification of initializers, independently of front_onnx (``classify``): each model is
exported a second time as a *twin*: the same module with every parameter perturbed once more
(seed 99), through the same tool. An initializer whose bytes differ between the model and its
twin derives from trained parameters: ``parameter``; equal bytes: ``constant`` (rotary cos/sin
caches, masks, shape tensors, axes). Initializers are matched by name when every name of the
model exists in the twin with the same shape (``match: "name"``, the case for every tool
here); otherwise by (node index, op, input position, shape) in node order (``match:
"position"``). The twin rather than source vs ``same`` because the torch legacy exporter that
optimum drives deduplicates initializers with equal values: a fresh model's all-ones norm
weights and all-zero biases become ONE shared initializer (e.g. ``model.layers.0.input_layernorm.weight``
feeds every RMSNorm of a fresh llama), so the fresh ``same`` export has fewer initializers
than the source; the twin of a fresh model is perturbed, so its tensors are all distinct and
its names a superset. For int4 the packed weights (``*_Q4``, uint8) and the scales (and zero
points if the builder wrote any; it writes none: symmetric) come out as parameters by this
rule. Constant nodes are compared the same way (matched by output name; ``constant_nodes``
counts them and lists any whose value differs in the twin: none in this corpus, the
exporters keep every weight in an initializer). The manifest also says whether the source and ``same`` exports have the
same initializer names (``names_as_source``).

Environments (optimum-onnx pins transformers < 4.58; the genai builder needs transformers 5 and
imports ``onnx_ir`` without declaring it), each with the CPU torch first:

    python3 -m venv /tmp/env-optimum
    /tmp/env-optimum/bin/pip install torch==2.13.0
    /tmp/env-optimum/bin/pip install optimum-onnx==0.1.0 onnxruntime==1.32.0    # optimum 2.1.0, transformers 4.57.6
    python3 -m venv /tmp/env-genai
    /tmp/env-genai/bin/pip install torch==2.13.0
    /tmp/env-genai/bin/pip install onnxruntime-genai==0.18.0 onnx_ir==1.1.0 transformers==5.24.0 onnx==1.23.2

Run from the repository root (no network: every model comes from a config, HF_HUB_OFFLINE=1):

    HF_HUB_OFFLINE=1 /tmp/env-optimum/bin/python tests/corpus/deploy_build.py --env optimum
    HF_HUB_OFFLINE=1 /tmp/env-genai/bin/python tests/corpus/deploy_build.py --env genai
    ... --env optimum optimum_vit            # some families of that environment only

The builds are deterministic: rebuilding both environments into another folder (``--root
/tmp/check``) gave byte-identical models and inputs (same sha256 as the manifest). Run the
two one after the other, not at once: each run replaces its families in ``tests/corpus/deploy/manifest.json`` (and records its
environment's package versions under ``versions.<env>``). The manifest holds per model:
family, role, tool, config, files with sha256, input specs, output names, op types (fused /
contrib ops separately), the classification of every initializer, parameter element count,
and for MatMulNBits the attributes and shapes of B / scales / zero points.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
DEPLOY = HERE / "deploy"
MANIFEST = "manifest.json"
ROLES = ("source", "same", "shrink", "grow")
BATCH, SEQ, PAST, IMG, VOCAB, HEAD = 2, 8, 4, 32, 80, 16
MAX_LAYERS, MAX_KV = 3, 3          # the grow role's; past_key_values are stored at this size
TWIN_SEED = 99
MS = "com.microsoft"

# (hidden, layers) per role; heads = hidden / 16; intermediate = 2 x hidden
WIDTH_DEPTH = {"source": (64, 2), "same": (64, 2), "shrink": (32, 1), "grow": (96, 3)}


def _llama_cfg(d: int, layers: int) -> dict:
    heads = d // HEAD
    return dict(vocab_size=VOCAB, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=HEAD,
                max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _bert_cfg(d: int, layers: int) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=d // HEAD,
                intermediate_size=2 * d, max_position_embeddings=64)


def _vit_cfg(d: int, layers: int) -> dict:
    return dict(image_size=IMG, patch_size=8, num_channels=3, hidden_size=d, num_hidden_layers=layers,
                num_attention_heads=d // HEAD, intermediate_size=2 * d)


@dataclass
class Family:
    name: str
    env: str                       # optimum / genai
    tool: str                      # what wrote the graph
    model: tuple[str, str]         # (transformers class, config class)
    config: Callable[[int, int], dict]
    inputs: tuple[str, ...]        # example inputs stored (a model takes those it declares)
    write: Callable[[Path, Path, Path], None]   # (saved HF folder, work dir, destination dir)
    note: str = ""
    batch: int = BATCH

    def configs(self) -> dict[str, dict]:
        return {r: self.config(*WIDTH_DEPTH[r]) for r in ROLES}


# ----------------------------------------------------------------------------- tools

@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        except Exception:
            sys.stderr.write(out.getvalue()[-3000:] + err.getvalue()[-3000:])
            raise


def _optimum(task: str) -> Callable[[Path, Path, Path], None]:
    def write(saved: Path, work: Path, dest: Path) -> None:
        from optimum.exporters.onnx import main_export

        out = work / "optimum"
        with _quiet():
            main_export(str(saved), output=str(out), task=task, do_validation=False)
        dest.mkdir(parents=True, exist_ok=True)
        _move_onnx(out / "model.onnx", dest)
    return write


def _optimum_o2(saved: Path, work: Path, dest: Path) -> None:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTModelForFeatureExtraction, ORTOptimizer

    out = work / "optimum"
    with _quiet():
        from optimum.exporters.onnx import main_export

        main_export(str(saved), output=str(out), task="feature-extraction", do_validation=False)
        model = ORTModelForFeatureExtraction.from_pretrained(str(out))
        ORTOptimizer.from_pretrained(model).optimize(save_dir=str(work / "o2"),
                                                     optimization_config=AutoOptimizationConfig.O2(
                                                         disable_embed_layer_norm_fusion=False))
    dest.mkdir(parents=True, exist_ok=True)
    _move_onnx(work / "o2" / "model_optimized.onnx", dest)


def _genai(precision: str) -> Callable[[Path, Path, Path], None]:
    def write(saved: Path, work: Path, dest: Path) -> None:
        out = work / "genai"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(saved), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(work / "cache")]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if r.returncode != 0 or not (out / "model.onnx").exists():
            raise RuntimeError(f"genai builder failed ({r.returncode}): {r.stdout[-2000:]}{r.stderr[-2000:]}")
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("model.onnx", "model.onnx.data"):     # the .onnx names its data file: keep both names
            if (out / f).exists():
                shutil.copyfile(out / f, dest / f)
    return write


def _move_onnx(src: Path, dest: Path) -> None:
    """A single-file export, renamed model.onnx (external data would keep its own name)."""
    import onnx

    m = onnx.load(str(src), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        raise RuntimeError(f"{src}: external data not expected for these tiny models")
    shutil.copyfile(src, dest / "model.onnx")


FAMILIES = {f.name: f for f in [
    Family("optimum_llama_past", "optimum", "optimum-onnx (text-generation-with-past)",
           ("LlamaForCausalLM", "LlamaConfig"), _llama_cfg,
           ("input_ids", "attention_mask", "position_ids") + tuple(
               f"past_key_values.{i}.{kv}" for i in range(MAX_LAYERS) for kv in ("key", "value")),
           _optimum("text-generation-with-past"), "GQA, past key values, legacy torch exporter via optimum"),
    Family("optimum_bert", "optimum", "optimum-onnx (feature-extraction)", ("BertModel", "BertConfig"), _bert_cfg,
           ("input_ids", "attention_mask", "token_type_ids"), _optimum("feature-extraction")),
    Family("optimum_vit", "optimum", "optimum-onnx (feature-extraction)", ("ViTModel", "ViTConfig"), _vit_cfg,
           ("pixel_values",), _optimum("feature-extraction")),
    Family("optimum_bert_o2", "optimum", "optimum-onnx + ORTOptimizer O2", ("BertModel", "BertConfig"), _bert_cfg,
           ("input_ids", "attention_mask", "token_type_ids"), _optimum_o2,
           "onnxruntime transformer optimizer at O2: fused com.microsoft ops"),
    Family("genai_llama_fp32", "genai", "onnxruntime-genai builder -p fp32 -e cpu", ("LlamaForCausalLM", "LlamaConfig"),
           _llama_cfg, ("input_ids", "attention_mask") + tuple(
               f"past_key_values.{i}.{kv}" for i in range(MAX_LAYERS) for kv in ("key", "value")),
           _genai("fp32"), "GroupQueryAttention with rotary caches, fused qkv MatMul; batch 1 (onnxruntime's CPU "
           "GroupQueryAttention: 'batch_size must be 1 when sequence_length > 1 and past context is given')", batch=1),
    Family("genai_llama_int4", "genai", "onnxruntime-genai builder -p int4 -e cpu", ("LlamaForCausalLM", "LlamaConfig"),
           _llama_cfg, ("input_ids", "attention_mask") + tuple(
               f"past_key_values.{i}.{kv}" for i in range(MAX_LAYERS) for kv in ("key", "value")),
           _genai("int4"), "MatMulNBits (int4, block 32, symmetric: no zero points); batch 1 as genai_llama_fp32",
           batch=1),
]}


# ----------------------------------------------------------------------------- inputs

def example_inputs(family: Family) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    llm = "llama" in family.name
    BATCH = family.batch  # noqa: N806
    out: dict[str, np.ndarray] = {}
    for name in family.inputs:
        if name == "input_ids":
            out[name] = rng.integers(4, VOCAB, (BATCH, SEQ), dtype=np.int64)
        elif name == "attention_mask":
            if llm:
                out[name] = np.ones((BATCH, PAST + SEQ), np.int64)
            else:
                m = np.ones((BATCH, SEQ), np.int64)
                m[1, -2:] = 0
                out[name] = m
        elif name == "position_ids":
            out[name] = np.tile(np.arange(PAST, PAST + SEQ, dtype=np.int64), (BATCH, 1))
        elif name == "token_type_ids":
            out[name] = np.zeros((BATCH, SEQ), np.int64)
        elif name.startswith("past_key_values."):
            out[name] = rng.standard_normal((BATCH, MAX_KV, PAST, HEAD)).astype(np.float32)
        elif name == "pixel_values":
            out[name] = rng.standard_normal((BATCH, 3, IMG, IMG)).astype(np.float32)
        else:
            raise KeyError(name)
    return out


def slice_feeds(stored: dict[str, np.ndarray], shapes: dict[str, list]) -> dict[str, np.ndarray]:
    """The stored arrays for the inputs a model declares (``shapes``: name -> dims, ints or
    symbols), each cut to the leading entries of every dimension the model fixes smaller."""
    out = {}
    for name, dims in shapes.items():
        a = stored[name]
        if dims is not None and len(dims) == a.ndim:
            a = a[tuple(slice(0, d) if isinstance(d, int) and 0 < d < n else slice(None)
                        for d, n in zip(dims, a.shape))]
        out[name] = np.ascontiguousarray(a)
    return out


# ----------------------------------------------------------------------------- models

def perturb(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g) * (p.std(unbiased=False) + 0.02))


def save_module(family: Family, role: str, folder: Path, twin: bool = False) -> None:
    """The role's HF model (and for llama a tokenizer) saved with save_pretrained; ``twin``:
    perturbed once more (seed 99), for the classification."""
    import torch
    import transformers

    cls, cfg_cls = family.model
    torch.manual_seed(0 if role == "source" else 1)
    config = getattr(transformers, cfg_cls)(**family.configs()[role])
    model = getattr(transformers, cls)(config).eval()
    if role == "source":
        perturb(model, 0)
    if twin:
        perturb(model, TWIN_SEED)
    model.save_pretrained(str(folder))
    if "llama" in family.name:
        tokenizer(folder)


def tokenizer(folder: Path) -> None:
    """A WordLevel tokenizer over the vocabulary, built offline (the genai builder refuses a
    folder without a tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(str(folder))


# ----------------------------------------------------------------------------- classification

def _arrays(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _slots(model, names) -> dict[str, tuple[int, str, int, tuple]]:
    """First use of each initializer: (node index, op, input position)."""
    out = {}
    for i, n in enumerate(model.graph.node):
        for j, x in enumerate(n.input):
            if x in names and x not in out:
                out[x] = (i, n.op_type, j)
    return out


def _differs(a: np.ndarray, b: np.ndarray | None) -> bool:
    return b is None or a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes()


def classify(path: Path, twin_path: Path) -> tuple[dict[str, dict], str, dict]:
    """Per initializer: class (parameter if its bytes differ in the twin), shape, dtype; how
    initializers were matched; and the Constant nodes' classification."""
    import onnx
    m, t = onnx.load(str(path)), onnx.load(str(twin_path))
    a, b = _arrays(m), _arrays(t)
    if all(n in b and b[n].shape == v.shape for n, v in a.items()):
        match, other = "name", {n: b[n] for n in a}
    else:
        match = "position"
        if [n.op_type for n in m.graph.node] != [n.op_type for n in t.graph.node]:
            raise RuntimeError(f"{path}: names differ from the twin's and so do the nodes")
        ts = {(i, j): x for i, n in enumerate(t.graph.node) for j, x in enumerate(n.input)}
        other = {name: b.get(ts.get((i, j), "")) for name, (i, _, j) in _slots(m, set(a)).items()}
    inits = {n: {"class": "parameter" if _differs(v, other.get(n)) else "constant", "shape": list(v.shape),
                 "dtype": v.dtype.name} for n, v in a.items()}
    consts = {"count": 0, "parameter": [], "unmatched": []}
    twin_consts = {n.output[0]: n for n in t.graph.node if n.op_type == "Constant"}
    for n in m.graph.node:
        if n.op_type != "Constant":
            continue
        consts["count"] += 1
        other_node = twin_consts.get(n.output[0])     # Constant nodes: matched by output name
        if other_node is None:
            consts["unmatched"].append(n.output[0])
            continue
        a_attr = [x.SerializeToString() for x in n.attribute]
        b_attr = [x.SerializeToString() for x in other_node.attribute]
        if a_attr != b_attr:
            consts["parameter"].append(n.output[0])
    return inits, match, consts


# ----------------------------------------------------------------------------- describing

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _input_specs(model) -> list[dict]:
    import onnx

    names = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in names:
            continue
        tt = i.type.tensor_type
        out.append({"name": i.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                    "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]})
    return out


def _ops(model) -> dict[str, int]:
    c = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                            for n in model.graph.node)
    return dict(sorted(c.items()))


def _nbits(model) -> list[dict]:
    """Each MatMulNBits: its attributes and the shapes of B, scales and zero points."""
    import onnx

    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        d = {"node": n.name, **{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}}
        for k, x in zip(("B", "scales", "zero_points", "g_idx", "bias"), list(n.input)[1:]):
            if x:
                d[k] = {"name": x, "shape": shapes.get(x)}
        out.append(d)
    return out


def run_model(path: Path, feeds: dict[str, np.ndarray]) -> list[str]:
    """Run the model in onnxruntime on the sliced example inputs; its output names."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    outs = sess.run(None, slice_feeds(feeds, shapes))
    bad = [o.name for o, v in zip(sess.get_outputs(), outs) if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"{path}: non-finite outputs {bad}")
    return [o.name for o in sess.get_outputs()]


# ----------------------------------------------------------------------------- build

def build_family(family: Family, root: Path, log=print) -> tuple[list[dict], dict]:
    import numpy.lib.format as npformat
    import onnx

    fam_dir = root / family.name
    if fam_dir.exists():
        shutil.rmtree(fam_dir)
    feeds = example_inputs(family)
    (fam_dir / "inputs").mkdir(parents=True)
    for name, value in feeds.items():
        with open(fam_dir / "inputs" / f"{name}.npy", "wb") as f:
            npformat.write_array(f, value, allow_pickle=False)
    entries, names = [], {}
    with tempfile.TemporaryDirectory(prefix="front-deploy-") as tmp:
        for role in ROLES:
            t0 = time.perf_counter()
            dest = fam_dir / role
            twin_dest = Path(tmp) / role / "twin"
            for twin, where in ((False, dest), (True, twin_dest)):
                work = Path(tmp) / role / ("w-twin" if twin else "w")
                save_module(family, role, work / "hf", twin=twin)
                family.write(work / "hf", work, where)
            path = dest / "model.onnx"
            inits, match, consts = classify(path, twin_dest / "model.onnx")
            outputs = run_model(path, feeds)
            m = onnx.load(str(path))
            names[role] = [t.name for t in m.graph.initializer]
            files = sorted(p for p in dest.iterdir() if p.is_file())
            ops = _ops(m)
            params = [v for v in inits.values() if v["class"] == "parameter"]
            entry = {
                "family": family.name, "role": role, "tool": family.tool, "exporter": family.env,
                "path": path.relative_to(root).as_posix(),
                "files": {f.relative_to(root).as_posix(): _sha256(f) for f in files},
                "config": family.configs()[role], "inputs": _input_specs(m), "outputs": outputs,
                "op_types": ops, "contrib_ops": sorted(k.split("::")[1] for k in ops if k.startswith(MS)),
                "match": match, "constant_nodes": consts,
                "parameter_elements": int(sum(np.prod(v["shape"], dtype=np.int64) for v in params)),
                "initializers": inits,
            }
            q = _nbits(m)
            if q:
                entry["matmulnbits"] = q
            entries.append(entry)
            n = collections.Counter(v["class"] for v in inits.values())
            log(f"  {family.name:20s} {role:6s} {time.perf_counter() - t0:5.1f} s  "
                f"{sum(f.stat().st_size for f in files) / 1024:6.0f} KiB  {dict(n)} match={match} "
                f"contrib={entry['contrib_ops']}")
    for e in entries:
        if e["role"] == "same":
            e["names_as_source"] = names["same"] == names["source"]
            e["names_missing_from_source"] = sorted(set(names["same"]) - set(names["source"]))
            e["names_missing_here"] = sorted(set(names["source"]) - set(names["same"]))
    info = {"env": family.env, "tool": family.tool, "note": family.note, "model": family.model[0],
            "inputs": {n: f"{family.name}/inputs/{n}.npy" for n in feeds},
            "input_sha256": {n: _sha256(fam_dir / "inputs" / f"{n}.npy") for n in feeds}}
    return entries, info


def versions(env: str) -> dict[str, str]:
    import importlib.metadata as md

    pkgs = {"optimum": ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers",
                        "numpy"),
            "genai": ("torch", "transformers", "onnxruntime-genai", "onnx-ir", "onnx", "onnxruntime", "tokenizers",
                      "numpy")}[env]
    out = {}
    for p in pkgs:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "absent"
    out["python"] = ".".join(map(str, sys.version_info[:3]))
    return out


def load_manifest(root: Path = DEPLOY) -> dict:
    return json.loads((root / MANIFEST).read_text())


def build(env: str, names: list[str], root: Path = DEPLOY, log=print) -> None:
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    old = load_manifest(root) if (root / MANIFEST).exists() else {"versions": {}, "families": {}, "models": []}
    entries = [e for e in old["models"] if e["family"] not in names and e["family"] in FAMILIES]
    fams = {f: v for f, v in old["families"].items() if f not in names and f in FAMILIES}
    for name in names:
        t0 = time.perf_counter()
        got, info = build_family(FAMILIES[name], root, log)
        info["build_seconds"] = round(time.perf_counter() - t0, 1)
        entries += got
        fams[name] = info
    vers = dict(old.get("versions", {}))
    vers[env] = versions(env)
    manifest = {
        "about": "tests/corpus/deploy_build.py; regenerate with `python tests/corpus/deploy_build.py --env "
                 "optimum|genai` in the environments its docstring describes",
        "versions": vers,
        "families": dict(sorted(fams.items(), key=lambda kv: list(FAMILIES).index(kv[0]))),
        "models": sorted(entries, key=lambda e: (list(FAMILIES).index(e["family"]), ROLES.index(e["role"]))),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, choices=("optimum", "genai"))
    p.add_argument("families", nargs="*", help="families of that environment (default: all of them)")
    p.add_argument("--root", type=Path, default=DEPLOY)
    args = p.parse_args(argv)
    mine = [f for f, fam in FAMILIES.items() if fam.env == args.env]
    names = args.families or mine
    wrong = [f for f in names if f not in mine]
    if wrong:
        p.error(f"not families of --env {args.env}: {wrong} (its families: {mine})")
    t0 = time.perf_counter()
    build(args.env, names, args.root)
    print(f"built {names} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
