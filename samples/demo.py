"""front-onnx end to end on the bundled samples (run by `make demo`; under a minute on 2 cores).

1. train the base sample ViT (d64, 4 blocks) on sklearn digits: the source;
2. export it and freshly initialized targets of other widths and depths to ONNX, with
   torch's dynamo and legacy exporters;
3. transfer the source's learngene into each target (in memory), and again through a
   learngene file (extract + save + initialize; for a target shrunk by selection, the
   learngene of the source ordered by importance, as the transfer orders it): the two
   outputs must be byte-identical (where the transfer selects units, which it copies from the
   source, the learngene gives them back to its float32 spectrum's rounding);
4. run every output in onnxruntime and compare it with the randomly initialized target.

Exits non-zero if any check fails. Writes everything under demo-out/ in the repository root.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
import torch  # noqa: E402

# Quiet: the exporters' warnings and log lines (e.g. "torchvision is not installed") are noise here.
warnings.filterwarnings("ignore")
for _name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# One intra-op thread: these models are tiny, and on a busy 2-core machine two OpenMP
# threads that wait for each other made training 20x slower (measured: 3 s vs 57 s).
torch.set_num_threads(1)

import front_onnx  # noqa: E402
from samples.export import export  # noqa: E402
from samples.models import ViT, ViTConfig, build, example_input  # noqa: E402
from samples.train import accuracy, digits_data, onnx_accuracy, onnx_logits, onnx_session, train_classifier  # noqa: E402

OUT = Path(os.path.relpath(ROOT / "demo-out"))  # relative, for short printed paths
SEED = 0
EPOCHS, LR = 25, 2e-3          # the base ViT reaches ~96% test accuracy in ~10 s on 2 cores
MIN_SOURCE_ACCURACY = 0.90


@dataclass(frozen=True)
class Target:
    name: str
    cfg: ViTConfig
    exporter: str
    note: str


TARGETS = (
    Target("small", ViTConfig(dim=32, depth=2, heads=4), "dynamo", "half width, half depth"),
    Target("narrow", ViTConfig(dim=32, depth=4, heads=4), "legacy", "half width, cross-exporter"),
    Target("same", ViTConfig(), "legacy", "source's shape, cross-exporter: must reproduce the source"),
    Target("large", ViTConfig(dim=128, depth=8, heads=4), "dynamo", "double width, double depth"),
)

failures: list[str] = []


def check(ok: bool, what: str) -> bool:
    if not ok:
        failures.append(what)
        print(f"  FAILED: {what}")
    return ok


def onnx_files(path: Path) -> list[Path]:
    """An ONNX file and its external data files (named after it, as the writers here do)."""
    return sorted(p for p in path.parent.glob(path.name + "*") if p.is_file())


def same_bytes(a: Path, b: Path) -> bool:
    fa, fb = onnx_files(a), onnx_files(b)
    return [p.name for p in fa] == [p.name for p in fb] and all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def same_to_rounding(a: Path, b: Path) -> bool:
    """The same graph, and weights equal to a float32 spectrum's rounding (1e-6 of each
    tensor's largest value)."""
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    wa = {t.name: numpy_helper.to_array(t) for t in ma.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in mb.graph.initializer}
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape or wa[k].dtype != wb[k].dtype for k in wa):
        return False
    close = all(np.max(np.abs(wa[k].astype(np.float64) - wb[k]), initial=0.0)
                <= 1e-6 * max(float(np.max(np.abs(wb[k]), initial=0.0)), 1e-30) for k in wa)
    del ma.graph.initializer[:], mb.graph.initializer[:]
    return close and ma == mb


def op_types(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def fresh_vit(cfg: ViTConfig, seed: int) -> ViT:
    torch.manual_seed(seed)
    return ViT(cfg).eval()


def main() -> int:
    t_start = time.perf_counter()
    torch.manual_seed(SEED)
    for sub in ("targets", "transfer", "initialize"):
        (OUT / sub).mkdir(parents=True, exist_ok=True)
        for p in (OUT / sub).glob("*"):
            p.unlink()
    x_tr, y_tr, x_te, y_te = digits_data(SEED)
    example = example_input("vit")

    # ------------------------------------------------------------ 1. the source
    print(f"[1] source: base sample ViT (d64, 4 blocks) on sklearn digits "
          f"({len(x_tr)} train / {len(x_te)} test images), {EPOCHS} epochs")
    t0 = time.perf_counter()
    source = build("vit", "base", seed=SEED)
    acc_before = accuracy(source, x_te, y_te)
    train_classifier(source, x_tr, y_tr, epochs=EPOCHS, lr=LR, seed=SEED)
    acc_source = accuracy(source, x_te, y_te)
    print(f"    test accuracy {acc_before:.3f} -> {acc_source:.3f}  ({time.perf_counter() - t0:.1f} s)")
    check(acc_source > MIN_SOURCE_ACCURACY, f"source accuracy {acc_source:.3f} <= {MIN_SOURCE_ACCURACY}")

    # ------------------------------------------------------------ 2. exports
    t0 = time.perf_counter()
    src_path = export(source, example, OUT / "source.onnx", "dynamo")
    acc_source_onnx = onnx_accuracy(src_path, x_te, y_te)
    print(f"\n[2] exported the source (dynamo) to {src_path}: onnxruntime test accuracy {acc_source_onnx:.3f}")
    check(acc_source_onnx == acc_source, f"source.onnx accuracy {acc_source_onnx} != torch {acc_source}")
    target_paths: dict[str, Path] = {}
    params: dict[str, int] = {}
    for i, t in enumerate(TARGETS):
        model = fresh_vit(t.cfg, seed=SEED + 100 + i)
        params[t.name] = sum(p.numel() for p in model.parameters())
        target_paths[t.name] = export(model, example, OUT / "targets" / f"{t.name}.onnx", t.exporter)
        print(f"    target {t.name:7s} d{t.cfg.dim:<3d} {t.cfg.depth} blocks  {t.exporter:6s}  "
              f"{params[t.name]:>7,d} params  ({t.note})")
    print(f"    exports: {time.perf_counter() - t0:.1f} s")

    # ------------------------------------------------------------ 3. transfers
    print("\n[3] front_onnx.transfer(source, target) for each target; then the same through a file:")
    t0 = time.perf_counter()
    gene = front_onnx.extract(src_path)
    gene_path = gene.save(OUT / "source.learngene.safetensors")
    print(f"    front_onnx.extract(source) -> {gene_path} ({gene_path.stat().st_size:,d} bytes, "
          f"{time.perf_counter() - t0:.2f} s)")
    # a target the transfer shrinks by selection gets the source's units ordered by importance
    # first: the learngene of that order (extract --align importance) gives the same bytes
    t0 = time.perf_counter()
    ordered = front_onnx.extract(src_path, align="importance")
    ordered_path = ordered.save(OUT / "source.importance.learngene.safetensors")
    print(f"    front_onnx.extract(source, align='importance') -> {ordered_path} "
          f"({ordered_path.stat().st_size:,d} bytes, {time.perf_counter() - t0:.2f} s)")
    results = {}
    for t in TARGETS:
        out = OUT / "transfer" / f"{t.name}.onnx"
        report = OUT / "transfer" / f"{t.name}.report.json"
        r = front_onnx.transfer(src_path, target_paths[t.name], out, report=report, validate=True)
        results[t.name] = r
        print(f"    {r.summary_line()}")
        v = r.validation
        warns = [f"{c.name} {c.figure}" for c in v.checks if c.status == "warn"]
        print(f"      validation: {'valid' if v.ok else 'INVALID'}; {v.provider_line()}"
              + (f"; activation-scale warnings: {'; '.join(warns)}" if warns else ""))
        check(v.ok, f"{t.name}: validation failed")
        sm = r.plan.summary()
        reasons = Counter(s.reason for s in r.plan.left)
        if reasons:
            print("      left: " + "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items())))
        check(sm["written"] > 0, f"{t.name}: nothing written")
        check(json.loads(report.read_text())["summary"] == sm, f"{t.name}: report summary differs from the plan")
        out2 = OUT / "initialize" / f"{t.name}.onnx"
        used = ordered_path if any(n.startswith("align: ") for n in r.plan.notes) else gene_path
        front_onnx.initialize(target_paths[t.name], used, out2)
        if r.plan.selected:  # selected units: copied by the transfer, from the spectrum by initialize
            same, how = same_to_rounding(out, out2), "equal to the spectrum's float32 rounding"
        else:
            same, how = same_bytes(out, out2), "byte-identical"
        print(f"      initialize(target, {used.name}) -> {out2}: "
              f"{how if same else 'DIFFERENT'} to the transfer output "
              f"({', '.join(p.name for p in onnx_files(out))})")
        check(same, f"{t.name}: transfer and extract+save+initialize outputs differ")

    # ------------------------------------------------------------ 4. run the outputs
    print("\n[4] every output in onnxruntime (CPU), test accuracy without any training:")
    src_logits = onnx_logits(src_path, x_te)
    rows = []
    for t in TARGETS:
        out = results[t.name].output
        sess = onnx_session(out)
        logits = onnx_logits(sess, x_te)
        finite = bool(np.isfinite(logits).all())
        check(finite, f"{t.name}: non-finite outputs")
        check(logits.shape == (len(x_te), 10), f"{t.name}: output shape {logits.shape}")
        check(op_types(out) == op_types(target_paths[t.name]), f"{t.name}: output nodes differ from the target's")
        acc_front = int((logits.argmax(-1) == y_te.numpy()).sum()) / len(y_te)
        acc_random = onnx_accuracy(target_paths[t.name], x_te, y_te)
        if t.cfg == ViTConfig():
            diff = float(np.abs(logits - src_logits).max())
            print(f"    {t.name}: max |logit - source logit| = {diff:.2e}")
            check(diff < 1e-3, f"{t.name}: a same-shape transfer should reproduce the source (max diff {diff:.2e})")
        sm = results[t.name].plan.summary()
        rows.append((t.name, f"d{t.cfg.dim}/L{t.cfg.depth}", t.exporter, f"{params[t.name]:,d}",
                     f"{sm['written']}/{sm['left']}", f"{sm['written_fraction']:.1%}",
                     f"{results[t.name].seconds:.2f} s", f"{acc_random:.3f}", f"{acc_front:.3f}",
                     "yes" if finite else "NO"))
    head = ("target", "shape", "exporter", "params", "written/left", "elements", "time",
            "acc random", "acc FRONT", "finite")
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    line = "  ".join
    print("    " + line(h.ljust(w) for h, w in zip(head, widths)))
    print("    " + line("-" * w for w in widths))
    for r in rows:
        print("    " + line(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"    (source d64/L4: {acc_source:.3f}; chance 0.100. A shrunk or grown target is an "
          f"initialization, not a finished model: its accuracy before training is not the goal.)")

    print(f"\ntotal {time.perf_counter() - t_start:.1f} s; outputs and JSON reports in {OUT}/")
    if failures:
        print(f"{len(failures)} check(s) FAILED:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
