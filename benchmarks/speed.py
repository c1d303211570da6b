"""Transfer time and peak memory from ~1M to ~1B source parameters.

For each size, a transformer-like source and a smaller target (half the width, 3/4 of
the depth, rounded; same vocabulary) are generated with onnx.helper, with every weight in
external data. The ``.onnx.data`` file is written tensor by tensor with numpy ``tofile``
and referenced by offset, so a 1B-parameter (4 GB fp32) model is generated in bounded
memory (the largest single tensor) and never exists as a whole in memory. Models are
cached under ``<out>/models/`` keyed by their configuration.

Per block (torch-exporter conventions): LayerNormalization (scale, bias) -> fused qkv
MatMul ``[d, 3d]`` (+ bias) -> Split -> single-head attention -> output projection
``[d, d]`` (+ bias) -> residual; LayerNormalization -> fc1 ``[d, 4d]`` (+ bias) -> Gelu ->
fc2 ``[4d, d]`` (+ bias) -> residual. Before the blocks an embedding ``Gather`` table
``[vocab, d]``; after them a final LayerNormalization and a small head ``[d, 16]``.
IR version 10, opset 20.

Measured, each in a fresh Python process (the file pages are read once before, so every
run sees a warm page cache):

    transfer   front_onnx.transfer(source, target, output, method="front")
    io floor   onnx.load(source) + onnx.load(target) + onnx.save(target, out,
               save_as_external_data=True): reading both models and writing one of the
               target's size, with no FRONT work at all

Time is the call's own wall time (perf_counter around it, imports excluded; the whole
child's time is also recorded). Peak memory is the child's VmHWM (/proc/self/status):
its own high-water RSS, including resident pages of memory-mapped files. (getrusage's
RUSAGE_CHILDREN ru_maxrss is the maximum over all children and, on Linux, inherits the
parent's peak across fork+exec, so it is recorded only as a cross-check.)

    python benchmarks/speed.py [--sizes 1M,10M,100M,300M,1B] [--repeats 3] [--out bench-out/speed]
                               [--quick] [--profile] [--skip-io] [--plot docs/img/speed.png]

Writes ``<out>/speed.json``, ``<out>/speed.md`` (the table) and the plot. ``--profile``
adds a phase breakdown (time, peak anonymous and file-backed RSS per phase) of one
transfer per size. The memory bound checked is the issue's: peak < 1.5 x target size + 1 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import procmem  # noqa: E402

GB = 1e9
GENERATOR_VERSION = 1
IR_VERSION = 10
OPSET = 20


# --------------------------------------------------------------------------- model configs
@dataclass(frozen=True)
class Config:
    dim: int
    depth: int
    vocab: int
    mlp: int = 4
    classes: int = 16
    fused_qkv: bool = True
    seed: int = 0

    @property
    def key(self) -> str:
        return (f"d{self.dim}-L{self.depth}-V{self.vocab}-m{self.mlp}-c{self.classes}"
                f"-{'qkv' if self.fused_qkv else 'sep'}-s{self.seed}-g{GENERATOR_VERSION}")

    def tensors(self) -> list[tuple[str, tuple[int, ...], float, float]]:
        """(name, shape, mean, std) of every initializer, in graph order."""
        d, h = self.dim, self.mlp * self.dim
        out = [("embed.weight", (self.vocab, d), 0.0, 0.02)]
        for i in range(self.depth):
            b = f"blocks.{i}"
            out += [(f"{b}.ln1.weight", (d,), 1.0, 0.05), (f"{b}.ln1.bias", (d,), 0.0, 0.02)]
            if self.fused_qkv:
                out += [(f"{b}.attn.qkv.weight_T", (d, 3 * d), 0.0, d ** -0.5), (f"{b}.attn.qkv.bias", (3 * d,), 0.0, 0.02)]
            else:
                for p in "qkv":
                    out += [(f"{b}.attn.{p}.weight_T", (d, d), 0.0, d ** -0.5), (f"{b}.attn.{p}.bias", (d,), 0.0, 0.02)]
            out += [(f"{b}.attn.proj.weight_T", (d, d), 0.0, d ** -0.5), (f"{b}.attn.proj.bias", (d,), 0.0, 0.02),
                    (f"{b}.ln2.weight", (d,), 1.0, 0.05), (f"{b}.ln2.bias", (d,), 0.0, 0.02),
                    (f"{b}.mlp.fc1.weight_T", (d, h), 0.0, d ** -0.5), (f"{b}.mlp.fc1.bias", (h,), 0.0, 0.02),
                    (f"{b}.mlp.fc2.weight_T", (h, d), 0.0, h ** -0.5), (f"{b}.mlp.fc2.bias", (d,), 0.0, 0.02)]
        out += [("norm.weight", (d,), 1.0, 0.05), ("norm.bias", (d,), 0.0, 0.02),
                ("head.weight_T", (d, self.classes), 0.0, d ** -0.5), ("head.bias", (self.classes,), 0.0, 0.02)]
        return out

    @property
    def params(self) -> int:
        n = 0
        for _, shape, _, _ in self.tensors():
            k = 1
            for s in shape:
                k *= s
            n += k
        return n

    def target(self) -> Config:
        """The target of this source: half the width, 3/4 of the depth (rounded), same vocabulary."""
        return Config(dim=self.dim // 2, depth=max(1, round(self.depth * 0.75)), vocab=self.vocab, mlp=self.mlp,
                      classes=self.classes, fused_qkv=self.fused_qkv, seed=self.seed + 1)


# nominal size -> source config (params = depth * 12 d^2 + vocab * d + small)
SIZES: dict[str, Config] = {
    "1M": Config(dim=128, depth=4, vocab=2048),
    "10M": Config(dim=256, depth=12, vocab=2048),
    "100M": Config(dim=768, depth=13, vocab=8192),
    "300M": Config(dim=1024, depth=22, vocab=16384),
    "1B": Config(dim=2048, depth=19, vocab=32768),
}
QUICK = ["1M", "10M"]


# --------------------------------------------------------------------------- generation
def _graph(cfg: Config, data_name: str, offsets: dict[str, tuple[int, int]]):
    """The ModelProto, every initializer an external reference into ``data_name``."""
    from onnx import TensorProto, helper

    nodes = []
    inits = []
    for name, shape, _, _ in cfg.tensors():
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        off, n = offsets[name]
        for k, v in (("location", data_name), ("offset", str(off)), ("length", str(n))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.data_location = TensorProto.EXTERNAL
        inits.append(t)

    def node(op, ins, outs, scope, **attrs):
        n = helper.make_node(op, ins, outs, name=f"{scope}/{op}_{len(nodes)}", **attrs)
        nodes.append(n)
        return outs[0]

    x = node("Gather", ["embed.weight", "input_ids"], ["/embed/out"], "/embed")
    d = cfg.dim
    for i in range(cfg.depth):
        b, s = f"blocks.{i}", f"/blocks.{i}"
        h = node("LayerNormalization", [x, f"{b}.ln1.weight", f"{b}.ln1.bias"], [f"{s}/ln1"], f"{s}/ln1", axis=-1)
        if cfg.fused_qkv:
            qkv = node("MatMul", [h, f"{b}.attn.qkv.weight_T"], [f"{s}/qkv0"], f"{s}/attn/qkv")
            qkv = node("Add", [qkv, f"{b}.attn.qkv.bias"], [f"{s}/qkv"], f"{s}/attn/qkv")
            split = helper.make_tensor(f"{s}/split", TensorProto.INT64, [3], [d, d, d])
            inits.append(split)
            q, k, v = (f"{s}/q", f"{s}/k", f"{s}/v")
            nodes.append(helper.make_node("Split", [qkv, split.name], [q, k, v], name=f"{s}/attn/Split", axis=-1))
        else:
            q, k, v = (node("Add", [node("MatMul", [h, f"{b}.attn.{p}.weight_T"], [f"{s}/{p}0"], f"{s}/attn/{p}"),
                                    f"{b}.attn.{p}.bias"], [f"{s}/{p}"], f"{s}/attn/{p}") for p in "qkv")
        kt = node("Transpose", [k], [f"{s}/kt"], f"{s}/attn", perm=[0, 2, 1])
        a = node("Softmax", [node("MatMul", [q, kt], [f"{s}/qk"], f"{s}/attn")], [f"{s}/p"], f"{s}/attn", axis=-1)
        o = node("MatMul", [a, v], [f"{s}/av"], f"{s}/attn")
        o = node("MatMul", [o, f"{b}.attn.proj.weight_T"], [f"{s}/proj0"], f"{s}/attn/proj")
        o = node("Add", [o, f"{b}.attn.proj.bias"], [f"{s}/proj"], f"{s}/attn/proj")
        x = node("Add", [x, o], [f"{s}/res1"], s)
        h = node("LayerNormalization", [x, f"{b}.ln2.weight", f"{b}.ln2.bias"], [f"{s}/ln2"], f"{s}/ln2", axis=-1)
        h = node("MatMul", [h, f"{b}.mlp.fc1.weight_T"], [f"{s}/fc1_0"], f"{s}/mlp/fc1")
        h = node("Add", [h, f"{b}.mlp.fc1.bias"], [f"{s}/fc1"], f"{s}/mlp/fc1")
        h = node("Gelu", [h], [f"{s}/gelu"], f"{s}/mlp/act")
        h = node("MatMul", [h, f"{b}.mlp.fc2.weight_T"], [f"{s}/fc2_0"], f"{s}/mlp/fc2")
        h = node("Add", [h, f"{b}.mlp.fc2.bias"], [f"{s}/fc2"], f"{s}/mlp/fc2")
        x = node("Add", [x, h], [f"{s}/out"], s)
    x = node("LayerNormalization", [x, "norm.weight", "norm.bias"], ["/norm/out"], "/norm", axis=-1)
    x = node("MatMul", [x, "head.weight_T"], ["/head/mm"], "/head")
    node("Add", [x, "head.bias"], ["logits"], "/head")
    graph = helper.make_graph(
        nodes, "speed-bench",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="front-onnx-speed-bench")
    model.ir_version = IR_VERSION
    return model


def generate(cfg: Config, models_dir: Path) -> Path:
    """``<models_dir>/<key>.onnx`` (+ ``.onnx.data``), generated once and cached.
    Memory: one tensor at a time (the largest is the embedding table)."""
    import numpy as np

    path = models_dir / f"{cfg.key}.onnx"
    if path.exists() and (models_dir / f"{cfg.key}.onnx.data").exists():
        return path
    models_dir.mkdir(parents=True, exist_ok=True)
    data = models_dir / f"{cfg.key}.onnx.data"
    tmp = data.with_name(data.name + ".tmp")
    rng = np.random.default_rng(cfg.seed)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    with open(tmp, "wb") as f:
        for name, shape, mean, std in cfg.tensors():
            n = int(np.prod(shape)) * 4
            pad = -pos % (4096 if n >= (1 << 20) else 64)
            if pad:
                f.write(b"\0" * pad)
                pos += pad
            # rows in chunks of ~64 MB: bounded memory even for a huge embedding table
            rows = shape[0]
            per_row = n // 4 // rows
            step = max(1, (16 << 20) // per_row)
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                a = rng.standard_normal((r1 - r0) * per_row, dtype=np.float32)
                a *= np.float32(std)
                a += np.float32(mean)
                a.tofile(f)
            offsets[name] = (pos, n)
            pos += n
    model = _graph(cfg, data.name, offsets)
    os.replace(tmp, data)
    ptmp = path.with_name(path.name + ".tmp")
    with open(ptmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(ptmp, path)
    return path


# The transform (``--method front``): what the scaling figures of docs/performance.md were
# measured with (``--method`` here measures another). The default (``hybrid``) fills these shrinks
# by selection after ordering the source's units by importance, which runs the source in
# onnxruntime and writes an ordered copy of it (docs/performance.md, DeiT-B).
METHOD = "front"


# --------------------------------------------------------------------------- child side
def _profiled_transfer(src: str, tgt: str, out: str, method: str = METHOD) -> list[dict]:
    """front_onnx.transfer with its internal steps timed: every known step function that
    front_onnx.api imports is wrapped, so the breakdown follows the code as it is."""
    import front_onnx
    from front_onnx import api
    from front_onnx.method import extraction

    rows: list[dict] = []
    depth = [0]
    with procmem.MemSampler(interval=0.02) as mem:
        def wrap(mod, name, label):
            fn = getattr(mod, name, None)
            if fn is None:
                return

            def inner(*a, **k):
                outer = depth[0] == 0
                if outer:
                    mem.reset()
                depth[0] += 1
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    depth[0] -= 1
                    mem.sample()
                    rows.append({"phase": label if outer else f"  of which {label}", "s": time.perf_counter() - t0,
                                 "peak_anon": mem.peak_anon, "peak_file": mem.peak_file,
                                 "peak_rss_so_far": procmem.peak_rss_bytes()})
            setattr(mod, name, inner)

        for mod, name, label in [(api, "_model", "read (parse protobuf)"), (api, "analyze", "analyze target"),
                                 (api, "extract_learngene", "extract (read source, DCT)"),
                                 (extraction, "file_sha256", "sha256 of source"),
                                 (api, "make_plan", "plan"), (api, "slot_values", "materialize (inverse DCT)"),
                                 (api, "write_initialized", "write"), (api, "transfer_streaming", "extract+materialize+write (streamed)")]:
            wrap(mod, name, label)
        t0 = time.perf_counter()
        front_onnx.transfer(src, tgt, out, method=method)
        rows.append({"phase": "total", "s": time.perf_counter() - t0, "peak_rss_so_far": procmem.peak_rss_bytes()})
    return rows




def _child(spec: dict) -> dict:
    t_start = time.perf_counter()
    import numpy  # noqa: F401
    import onnx

    import front_onnx

    res: dict = {"mode": spec["mode"], "import_s": time.perf_counter() - t_start,
                 "rss_after_imports": procmem.peak_rss_bytes()}
    src, tgt, out = spec["source"], spec["target"], spec["output"]
    t0 = time.perf_counter()
    if spec["mode"] == "transfer":
        r = front_onnx.transfer(src, tgt, out, method=spec.get("method", METHOD))
        res["call_s"] = time.perf_counter() - t0
        res["written_fraction"] = r.plan.summary()["written_fraction"]
    elif spec["mode"] == "io":
        s = onnx.load(src)
        t = onnx.load(tgt)
        res["load_s"] = time.perf_counter() - t0
        onnx.save_model(t, out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(out).name + ".data", size_threshold=1024)
        res["call_s"] = time.perf_counter() - t0
        del s
    elif spec["mode"] == "profile":
        res["phases"] = _profiled_transfer(src, tgt, out, spec.get("method", METHOD))
        res["call_s"] = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown mode {spec['mode']!r}")
    res["peak_rss"] = procmem.peak_rss_bytes()
    res["child_s"] = time.perf_counter() - t_start
    return res


# --------------------------------------------------------------------------- parent side
def run_child(spec: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import json, sys; sys.path.insert(0, %r); import speed; "
            "print('@@RESULT@@' + json.dumps(speed._child(json.loads(sys.argv[1]))))" % str(Path(__file__).parent))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}",
                "process_s": wall}
    line = [x for x in p.stdout.splitlines() if x.startswith("@@RESULT@@")][-1]
    res = json.loads(line[len("@@RESULT@@"):])
    res["process_s"] = wall
    res["rusage_children_maxrss"] = children
    return res


def measure(spec: dict, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        procmem.remove_output(Path(spec["output"]))
        runs.append(run_child(spec))
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"], "runs": runs}
    return {"s": statistics.median(r["call_s"] for r in ok), "s_min": min(r["call_s"] for r in ok),
            "peak": max(r["peak_rss"] for r in ok), "process_s": statistics.median(r["process_s"] for r in ok),
            "runs": runs}


def _human(n: float) -> str:
    for unit, k in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= k:
            return f"{n / k:.3g}{unit}"
    return str(int(n))


def bench_size(name: str, out: Path, repeats: int, io: bool, profile: bool, method: str = METHOD) -> dict:
    cfg = SIZES[name]
    tcfg = cfg.target()
    t0 = time.perf_counter()
    src = generate(cfg, out / "models")
    tgt = generate(tcfg, out / "models")
    gen_s = time.perf_counter() - t0
    procmem.warm_page_cache([src, tgt])
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    output = work / f"out-{name}.onnx"
    row = {"size": name, "source": asdict(cfg), "target": asdict(tcfg), "source_params": cfg.params,
           "target_params": tcfg.params, "source_bytes": procmem.model_size(src),
           "target_bytes": procmem.model_size(tgt),
           "generate_s": gen_s}
    spec = {"mode": "transfer", "source": str(src), "target": str(tgt), "output": str(output), "method": method}
    row["transfer"] = measure(spec, repeats)
    if "error" not in row["transfer"]:
        row["output_bytes"] = procmem.model_size(output)
    procmem.remove_output(output)
    if io:
        row["io"] = measure(dict(spec, mode="io", output=str(work / f"io-{name}.onnx")), repeats)
        procmem.remove_output(work / f"io-{name}.onnx")
    if profile:
        row["profile"] = run_child(dict(spec, mode="profile"))
        procmem.remove_output(output)
    tr = row["transfer"]
    row["bound_bytes"] = 1.5 * row["target_bytes"] + GB
    if "error" not in tr:
        row["params_per_s"] = cfg.params / tr["s"]
        row["within_bound"] = tr["peak"] < row["bound_bytes"]
        if io and "error" not in row["io"]:
            row["ratio_to_io"] = tr["s"] / row["io"]["s"]
    return row


def table(rows: list[dict]) -> str:
    head = ("| size | source params | target params | transfer s (min) | params/s | I/O floor s | ratio to I/O "
            "| peak memory | I/O floor peak | target file | bound 1.5x+1GB | within |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        tr, io = r["transfer"], r.get("io", {})
        if "error" in tr:
            lines.append(f"| {r['size']} | {_human(r['source_params'])} | {_human(r['target_params'])} | "
                         f"failed: {tr['error']} | | | | | | | | |")
            continue
        ios = f"{io['s']:.2f}" if io and "error" not in io else "–"
        iop = f"{io['peak'] / GB:.2f} GB" if io and "error" not in io else "–"
        ratio = f"{r['ratio_to_io']:.2f}" if "ratio_to_io" in r else "–"
        lines.append(
            f"| {r['size']} | {_human(r['source_params'])} | {_human(r['target_params'])} | "
            f"{tr['s']:.2f} ({tr['s_min']:.2f}) | {_human(r['params_per_s'])} | {ios} | {ratio} | "
            f"{tr['peak'] / GB:.2f} GB | {iop} | {r['target_bytes'] / GB:.3f} GB | {r['bound_bytes'] / GB:.2f} GB | "
            f"{'yes' if r['within_bound'] else '**no**'} |")
    return head + "\n".join(lines) + "\n"


def profile_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        p = r.get("profile")
        if not p or "phases" not in p:
            continue
        out.append(f"\n{r['size']} ({_human(r['source_params'])} -> {_human(r['target_params'])}):\n\n"
                   "| phase | s | peak anon RSS | peak file RSS | peak RSS so far |\n|---|---|---|---|---|")
        for ph in p["phases"]:
            out.append(f"| {ph['phase']} | {ph['s']:.2f} | {ph.get('peak_anon', 0) / GB:.2f} GB | "
                       f"{ph.get('peak_file', 0) / GB:.2f} GB | {ph['peak_rss_so_far'] / GB:.2f} GB |")
    return "\n".join(out) + ("\n" if out else "")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r["transfer"]]
    if not ok:
        return
    x = [r["source_params"] for r in ok]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.loglog(x, [r["transfer"]["s"] for r in ok], "o-", label="front_onnx.transfer")
    io = [(r["source_params"], r["io"]["s"]) for r in ok if "io" in r and "error" not in r["io"]]
    if io:
        a1.loglog(*zip(*io), "s--", label="I/O floor (onnx.load x2 + onnx.save)")
    a1.set_xlabel("source parameters")
    a1.set_ylabel("wall time, s")
    a1.set_title("time")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend()
    a2.loglog(x, [r["transfer"]["peak"] / GB for r in ok], "o-", label="front_onnx.transfer peak RSS")
    iop = [(r["source_params"], r["io"]["peak"] / GB) for r in ok if "io" in r and "error" not in r["io"]]
    if iop:
        a2.loglog(*zip(*iop), "s--", label="I/O floor peak RSS")
    a2.loglog(x, [r["bound_bytes"] / GB for r in ok], "k:", label="bound: 1.5 x target + 1 GB")
    a2.loglog(x, [r["target_bytes"] / GB for r in ok], "-", color="grey", alpha=0.5, label="target file size")
    a2.set_xlabel("source parameters")
    a2.set_ylabel("GB")
    a2.set_title("peak memory")
    a2.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle("front-onnx transfer: target = half width, 3/4 depth")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "speed")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--skip-io", action="store_true", help="do not measure the I/O floor")
    ap.add_argument("--profile", action="store_true", help="phase breakdown of one transfer per size")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "speed.png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--method", default=METHOD, choices=("front", "hybrid", "expand", "select"),
                    help="front_onnx.transfer's method (default: front, as docs/performance.md measured; "
                         "the plot is written only for front unless --plot is given)")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r} (choose from {', '.join(SIZES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in sizes:
        print(f"[{s}] ...", flush=True)
        rows.append(bench_size(s, args.out, args.repeats, not args.skip_io, args.profile, args.method))
        print(table(rows[-1:]), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "repeats": args.repeats, "method": args.method,
            "load": os.getloadavg() if hasattr(os, "getloadavg") else None}
    (args.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    md = table(rows) + profile_table(rows)
    (args.out / "speed.md").write_text(md)
    print(md)
    if not args.no_plot and (args.method == METHOD or "--plot" in (argv if argv is not None else sys.argv)):
        plot(rows, args.plot)
    return 0 if all(r["transfer"].get("s") is not None and r.get("within_bound") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
