"""Speed and peak memory of a DeiT-B -> DeiT-S transfer, ONNX file to ONNX file.

Budget (issue): ``front_onnx.transfer`` from a DeiT-B-sized source (86M parameters,
12 blocks, width 768) to a DeiT-S-sized target (width 384) in at most 3 s and 1.5 GB
peak memory on a 2-core machine. (The authors' in-memory PyTorch code: about 30 s and
5.7 GB for this pair on the same machine.)

What is measured, each in a fresh Python process so that its peak RSS (VmHWM from
/proc/self/status, which counts file-backed pages such as a memory-mapped
``.onnx.data`` too; ``ru_maxrss`` elsewhere, see ``procmem.peak_rss_bytes``) is that
operation's own:

    transfer   front_onnx.transfer(source, target, output)
    CLI        python -m front_onnx transfer SOURCE TARGET -o OUT -q, under /usr/bin/time
               (whole process only: wall time, peak RSS from time's %M)
    extract    front_onnx.extract(source)
    io-target  onnx.load (with external data) + onnx.save of the target: the I/O floor
    io-source  the same for the source
    imports    the imports alone (the RSS and time every child pays before any work)

For each: the call's own wall time (perf_counter around it), the whole child's wall
time (interpreter start, imports, call, exit; timed by the parent) and the peak RSS,
as median and min over ``--repeats`` runs. The files are read once before measuring, so
every run sees a warm page cache.

    python benchmarks/transfer_speed.py [--workdir bench-out] [--exporter dynamo|legacy]
        [--repeats 3] [--json results.json] [--profile] [--check]

``--profile`` adds a cProfile of one transfer (top 25 by cumulative time, top 15 by
own time) and a phase breakdown (time, peak RSS, peak anonymous / file-backed RSS per
step of transfer), each in its own fresh process.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from procmem import (  # noqa: E402
    MemSampler,
    data_file,
    model_size,
    peak_rss_bytes,
    remove_output,
    ru_maxrss_bytes,
    status_kib,
    warm_page_cache,
)

BUDGET_S = 3.0
BUDGET_BYTES = 1.5e9
REFERENCE = "authors' in-memory PyTorch code: ~30 s, ~5.7 GB"

MODELS = {
    # name: ViTConfig kwargs
    "deit-b": dict(image=224, patch=16, channels=3, dim=768, depth=12, heads=12, mlp_ratio=4, classes=1000),
    "deit-s": dict(image=224, patch=16, channels=3, dim=384, depth=12, heads=6, mlp_ratio=4, classes=1000),
}
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------- helpers
def _gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# --------------------------------------------------------------------------- models
def _onnx_float_elements(path: Path) -> int:
    """Elements of the float initializers of an ONNX file (protobuf only, no data read)."""
    import math

    import onnx
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    m = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(t.dims) for t in m.graph.initializer if t.data_type in floats)


def build_models(workdir: Path, exporter: str, rebuild: bool = False) -> dict:
    """Export DeiT-B and DeiT-S sized ViTs once; a manifest records configs and parameter counts."""
    d = workdir / exporter
    manifest_path = d / "manifest.json"
    want = {"version": MANIFEST_VERSION, "exporter": exporter, "configs": MODELS}
    if not rebuild and manifest_path.exists():
        try:
            man = json.loads(manifest_path.read_text())
        except ValueError:
            man = {}
        if {k: man.get(k) for k in want} == want and all((d / f"{n}.onnx").exists() for n in MODELS):
            return man
    import torch

    from samples.export import export
    from samples.models import ViT, ViTConfig

    man = dict(want, models={})
    for name, kw in MODELS.items():
        path = d / f"{name}.onnx"
        remove_output(path)
        print(f"building {name} ({exporter}) -> {path} ...", flush=True)
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = ViT(ViTConfig(**kw)).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            export(model, torch.randn(1, 3, 224, 224), path, exporter)
        del model
        man["models"][name] = {"file": path.name, "torch_parameters": params,
                               "export_s": round(time.perf_counter() - t0, 1)}
        print(f"  {params / 1e6:.2f} M parameters, exported in {time.perf_counter() - t0:.1f} s", flush=True)
    manifest_path.write_text(json.dumps(man, indent=2) + "\n")
    return man


# --------------------------------------------------------------------------- child side
def _child(spec: dict) -> dict:
    """Runs in a fresh process: one measured operation, result as a dict."""
    t_start = time.perf_counter()
    mode = spec["mode"]
    import numpy  # noqa: F401  (every mode pays these imports)
    import onnx

    import front_onnx

    res: dict = {"mode": mode}
    res["import_s"] = time.perf_counter() - t_start
    res["rss_after_imports"] = peak_rss_bytes()
    src, tgt, out = spec.get("source"), spec.get("target"), spec.get("output")

    if mode == "imports":
        res["call_s"] = 0.0
    elif mode == "transfer":
        t0 = time.perf_counter()
        r = front_onnx.transfer(src, tgt, out, **({"method": spec["method"]} if spec.get("method") else {}))
        res["call_s"] = time.perf_counter() - t0
        res["reported_s"] = r.seconds
        res["summary"] = r.summary_line()
        res["plan"] = r.plan.summary()
    elif mode == "extract":
        t0 = time.perf_counter()
        gene = front_onnx.extract(src)
        res["call_s"] = time.perf_counter() - t0
        res["templates"] = len(gene.templates)
        res["skipped"] = len(gene.skipped)
        res["gene_bytes"] = int(sum(t.coefficients.nbytes for t in gene.templates.values()))
    elif mode == "io":
        t0 = time.perf_counter()
        m = onnx.load(spec["path"], load_external_data=True)
        t1 = time.perf_counter()
        onnx.save_model(m, out, save_as_external_data=spec["external"], all_tensors_to_one_file=True,
                        location=Path(out).name + ".data", size_threshold=1024)
        res["call_s"] = time.perf_counter() - t0
        res["load_s"] = t1 - t0
        res["save_s"] = res["call_s"] - res["load_s"]
    elif mode == "profile":
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        front_onnx.transfer(src, tgt, out, **({"method": spec["method"]} if spec.get("method") else {}))
        prof.disable()
        res["call_s"] = time.perf_counter() - t0
        text = []
        for key, n in (("cumulative", 25), ("tottime", 15)):
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats(key).print_stats(n)
            text.append(buf.getvalue())
        res["profile"] = text
    elif mode == "phases":
        res.update(_phases(src, tgt, out))
    else:
        raise SystemExit(f"unknown child mode {mode!r}")
    res["peak_rss"] = peak_rss_bytes()
    res["ru_maxrss"] = ru_maxrss_bytes()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["cpu_s"] = ru.ru_utime + ru.ru_stime      # whole child, imports included
    res["sys_s"] = ru.ru_stime
    res["minflt"] = ru.ru_minflt                  # page faults (fresh memory is expensive on VMs)
    res["child_s"] = time.perf_counter() - t_start
    return res


def _phases(src: str, tgt: str, out: str) -> dict:
    """transfer() step by step (mirrors front_onnx.api.transfer/initialize), with time and
    memory per step. Uses internal functions; if they moved, says so instead of failing."""
    try:
        from front_onnx.analysis import analyze
        from front_onnx.method.extraction import extract_learngene, file_sha256
        from front_onnx.method.materialize import slot_values, write_initialized
        from front_onnx.onnxio import load_model
        from front_onnx.api import DEFAULT_DEPTH
        from front_onnx.method.planning import make_plan
    except ImportError as e:
        return {"call_s": 0.0, "phases_error": f"internals changed ({e}); phase breakdown skipped"}
    rows = []
    with MemSampler() as mem:
        def step(name, fn):
            mem.reset()
            before = status_kib("RssAnon", "RssFile")
            t0 = time.perf_counter()
            v = fn()
            dt = time.perf_counter() - t0
            mem.sample()
            rows.append({"phase": name, "s": dt, "peak_rss_so_far": peak_rss_bytes(),
                         "anon_before": before.get("RssAnon", 0) * 1024, "peak_anon": mem.peak_anon,
                         "file_before": before.get("RssFile", 0) * 1024, "peak_file": mem.peak_file})
            return v
        t0 = time.perf_counter()
        try:
            s = step("load_model(source)", lambda: load_model(src))
            gs_s = step("analyze(source)", lambda: analyze(s))
            gene = step("extract_learngene (incl. sha256)", lambda: extract_learngene(s, structure=gs_s))
            step("  of which file_sha256(source)", lambda: file_sha256(s.path))
            t = step("load_model(target)", lambda: load_model(tgt))
            gs, st = step("analyze(target)", lambda: analyze(t))
            p = step("make_plan", lambda: make_plan(gene, gs, st, [n.name for n in t.proto.graph.node],
                                                    DEFAULT_DEPTH))
            dtypes = {name: t.dtype(name) for name in {sl.initializer for sl in gs.slots}}
            values = step("slot_values (materialize)",
                          lambda: slot_values(gene, gs, st, p, dtypes, DEFAULT_DEPTH))
            step("write_initialized", lambda: write_initialized(t, gs, values, Path(out)))
        except TypeError as e:
            return {"call_s": 0.0, "phases_error": f"internals changed ({e}); phase breakdown skipped"}
        total = time.perf_counter() - t0
    # file_sha256 is timed twice (inside extract and alone): don't count it in the total
    return {"call_s": total - rows[3]["s"], "phases": rows}


# --------------------------------------------------------------------------- parent side
def _busy_cpu_s() -> float | None:
    """CPU seconds all processes of the machine have used since boot (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


SETTLE_S = 0.0   # set from --settle


def _wait_quiet(max_wait: float, window: float = 0.5, threshold: float = 0.15) -> bool:
    """Wait (at most max_wait s) for a window in which other processes use under
    ``threshold`` of a CPU; True when one was found. The machine may be shared."""
    deadline = time.perf_counter() + max_wait
    while True:
        b0 = _busy_cpu_s()
        if b0 is None:
            return True
        time.sleep(window)
        b1 = _busy_cpu_s()
        if b1 is not None and (b1 - b0) / window < threshold:
            return True
        if time.perf_counter() >= deadline:
            return False


def run_child(spec: dict, timeout: float = 900) -> dict:
    quiet = _wait_quiet(SETTLE_S) if SETTLE_S > 0 else None
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    busy0 = _busy_cpu_s()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    wall = time.perf_counter() - t0
    busy1 = _busy_cpu_s()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time other processes used meanwhile: timings are not trustworthy when it is large
    foreign = None
    if busy0 is not None and busy1 is not None:
        ours = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        foreign = max(0.0, (busy1 - busy0) - ours)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec['mode']} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    res = json.loads(line)
    res["process_s"] = wall
    res["foreign_cpu_s"] = foreign
    res["started_quiet"] = quiet
    return res


TIME_BIN = "/usr/bin/time"


def run_cli(spec: dict, timeout: float = 900) -> dict:
    """The real command line, ``python -m front_onnx transfer SOURCE TARGET -o OUT -q``, under
    GNU time for its peak RSS (time forks the command itself, so nothing is inherited)."""
    import tempfile

    quiet = _wait_quiet(SETTLE_S) if SETTLE_S > 0 else None
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "front_onnx", "transfer", spec["source"], spec["target"], "-o", spec["output"], "-q",
           "--no-validate"] + (["--method", spec["method"]] if spec.get("method") else [])
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        proc = subprocess.run([TIME_BIN, "-o", tf.name, "-f", "%M %U %S %R", *cmd], capture_output=True, text=True,
                              env=env, cwd=str(ROOT), timeout=timeout)
        wall = time.perf_counter() - t0
        stats = tf.read().split()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    maxrss_kib, user, system, minflt = stats[-4:]
    return {"mode": "cli", "call_s": None, "process_s": wall, "peak_rss": int(maxrss_kib) * 1024,
            "rss_after_imports": None, "import_s": None, "cpu_s": float(user) + float(system), "sys_s": float(system),
            "minflt": int(minflt), "foreign_cpu_s": None, "started_quiet": quiet}


def measure(name: str, spec: dict, repeats: int, cleanup: Path | None = None) -> dict:
    runs = []
    for _ in range(repeats):
        if cleanup is not None:
            remove_output(cleanup)
        runs.append(run_cli(spec) if spec["mode"] == "cli" else run_child(spec))
    def agg(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "all": vals} if vals else None
    out = {"name": name, "runs": runs, "call_s": agg("call_s"), "process_s": agg("process_s"),
           "peak_rss": agg("peak_rss"), "rss_after_imports": agg("rss_after_imports"), "import_s": agg("import_s"),
           "cpu_s": agg("cpu_s"), "minflt": agg("minflt"), "foreign_cpu_s": agg("foreign_cpu_s")}
    if cleanup is not None:
        out["output_bytes"] = model_size(cleanup) if cleanup.exists() else None
    return out


def print_table(results: list[dict]) -> None:
    hdr = (f"{'operation':<20}{'call s med':>11}{'call s min':>11}{'process s':>10}{'cpu s':>7}"
           f"{'peak GB med':>12}{'peak GB min':>12}{'imports GB':>11}{'faults':>9}{'other cpu s':>12}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        def med(key, fmt):
            return fmt(r[key]["median"]) if r.get(key) else "-"

        def mn(key, fmt):
            return fmt(r[key]["min"]) if r.get(key) else "-"
        foreign = "-" if not r["foreign_cpu_s"] else f"{r['foreign_cpu_s']['max']:.2f}"
        print(f"{r['name']:<20}{med('call_s', _s):>11}{mn('call_s', _s):>11}"
              f"{med('process_s', _s):>10}{med('cpu_s', lambda x: f'{x:.2f}'):>7}"
              f"{med('peak_rss', _gb):>12}{mn('peak_rss', _gb):>12}"
              f"{med('rss_after_imports', _gb):>11}{med('minflt', lambda x: f'{x:.0f}'):>9}"
              f"{foreign:>12}")


def print_phases(res: dict) -> None:
    if "phases_error" in res:
        print(res["phases_error"])
        return
    print(f"{'phase':<36}{'s':>8}{'anon before':>13}{'anon peak':>11}{'file before':>13}{'file peak':>11}"
          f"{'VmHWM so far':>15}")
    for r in res["phases"]:
        print(f"{r['phase']:<36}{r['s']:>8.3f}{_gb(r['anon_before']):>13}{_gb(r['peak_anon']):>11}"
              f"{_gb(r['file_before']):>13}{_gb(r['peak_file']):>11}{_gb(r['peak_rss_so_far']):>15}")
    print(f"{'total (excluding the extra sha256)':<36}{res['call_s']:>8.3f}   (GB = 1e9 bytes; "
          "anon/file peaks sampled every 10 ms)")


def check_output(path: Path) -> str:
    """Run the transferred model once with onnxruntime (CPU): finite logits of the right shape."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    ok = y.shape == (1, 1000) and bool(np.all(np.isfinite(y)))
    return f"onnxruntime: logits {y.shape}, finite={bool(np.all(np.isfinite(y)))}, std={float(y.std()):.4f} -> " \
           f"{'OK' if ok else 'FAILED'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench-out"), help="models and outputs (default bench-out/)")
    ap.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--profile", action="store_true", help="cProfile one transfer and print a phase breakdown")
    ap.add_argument("--check", action="store_true", help="run the transferred model once with onnxruntime")
    ap.add_argument("--skip-io", action="store_true", help="skip the I/O floor measurements")
    ap.add_argument("--rebuild", action="store_true", help="export the models again even if cached")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="before each run, wait up to this many seconds for other processes to go quiet (0: don't)")
    ap.add_argument("--method", choices=("expand", "hybrid", "front", "select"), default=None,
                    help="front_onnx.transfer's method (default: the API's; 'front' for the transform alone)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child is not None:
        print(json.dumps(_child(json.loads(args._child))), flush=True)
        return 0
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    global SETTLE_S
    SETTLE_S = max(0.0, args.settle)

    workdir = args.workdir.resolve()
    man = build_models(workdir, args.exporter, args.rebuild)
    d = workdir / args.exporter
    src, tgt = d / "deit-b.onnx", d / "deit-s.onnx"
    outdir = workdir / "out" / args.exporter
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / "deit-s-front.onnx"

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "exporter": args.exporter, "repeats": args.repeats}
    models = {}
    for name, p in (("source", src), ("target", tgt)):
        mm = man["models"][Path(p).stem]
        models[name] = {"path": str(p), "bytes": model_size(p), "torch_parameters": mm["torch_parameters"],
                        "onnx_float_elements": _onnx_float_elements(p), "external_data": data_file(p).exists()}
    print(f"front-onnx transfer benchmark ({args.exporter} exporter, {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats, fresh process each)")
    for name, m in models.items():
        print(f"  {name}: {m['path']}  {m['torch_parameters'] / 1e6:.2f} M parameters "
              f"({m['onnx_float_elements'] / 1e6:.2f} M float initializer elements), {m['bytes'] / 1e6:.1f} MB"
              f"{' incl. .onnx.data' if m['external_data'] else ''}")
    print(f"  budget: transfer <= {BUDGET_S:g} s and <= {BUDGET_BYTES / 1e9:g} GB peak RSS ({REFERENCE})")
    warm_page_cache([src, tgt])

    results = []
    results.append(measure("imports only", {"mode": "imports"}, args.repeats))
    method = {"method": args.method} if args.method else {}
    results.append(measure("transfer B->S", {"mode": "transfer", "source": str(src), "target": str(tgt),
                                             "output": str(out), **method}, args.repeats, cleanup=out))
    if Path(TIME_BIN).exists():
        results.append(measure("CLI transfer B->S", {"mode": "cli", "source": str(src), "target": str(tgt),
                                                     "output": str(out), **method}, args.repeats, cleanup=out))
    results.append(measure("extract(source)", {"mode": "extract", "source": str(src)}, args.repeats))
    if not args.skip_io:
        for name, p in (("target", tgt), ("source", src)):
            o = outdir / f"io-{name}.onnx"
            results.append(measure(f"I/O floor {name}", {"mode": "io", "path": str(p), "output": str(o),
                                                         "external": data_file(p).exists()}, args.repeats, cleanup=o))
            remove_output(o)
    print()
    print_table(results)
    print("(call = perf_counter around the call; process = whole child incl. interpreter start and imports, "
          "timed by the parent;\n cpu = user+sys CPU of the child; peak = VmHWM of the child, incl. file-backed "
          "pages; GB = 1e9 bytes;\n faults = minor page faults of the child; other cpu = most CPU seconds other "
          "processes used during one run)")
    busy = max((r["foreign_cpu_s"] or {"max": 0.0})["max"] / max(r["process_s"]["min"], 1e-9) for r in results)
    if any(x.get("started_quiet") is False for r in results for x in r["runs"]):
        print("WARNING: some runs started while other processes were busy (no quiet moment within --settle).")
    if busy > 0.25:
        print(f"WARNING: other processes used up to {busy:.0%} of a CPU while measuring; timings are inflated "
              "(cpu s is the steadier number).")
    for r in results:
        if r["name"].startswith("I/O"):
            loads = [x["load_s"] for x in r["runs"]]
            saves = [x["save_s"] for x in r["runs"]]
            print(f"  {r['name']}: load {statistics.median(loads):.3f} s + save {statistics.median(saves):.3f} s (median)")

    tr = results[1]
    print(f"\ntransfer: {tr['runs'][-1]['summary']}")
    t_med, m_med = tr["call_s"]["median"], tr["peak_rss"]["median"]
    verdict = {"time_ok": t_med <= BUDGET_S, "memory_ok": m_med <= BUDGET_BYTES,
               "process_time_ok": tr["process_s"]["median"] <= BUDGET_S}
    print(f"budget: call {t_med:.2f} s {'<=' if verdict['time_ok'] else '>'} {BUDGET_S:g} s "
          f"({'OK' if verdict['time_ok'] else 'MISSED'}); whole process {tr['process_s']['median']:.2f} s "
          f"({'OK' if verdict['process_time_ok'] else 'over'}); peak RSS {m_med / 1e9:.2f} GB "
          f"{'<=' if verdict['memory_ok'] else '>'} {BUDGET_BYTES / 1e9:g} GB ({'OK' if verdict['memory_ok'] else 'MISSED'})")

    extra: dict = {}
    if args.check:
        remove_output(out)
        run_child({"mode": "transfer", "source": str(src), "target": str(tgt), "output": str(out)})
        extra["check"] = check_output(out)
        print(extra["check"])
    if args.profile:
        prof_out = outdir / "deit-s-front-profile.onnx"
        ph = run_child({"mode": "phases", "source": str(src), "target": str(tgt), "output": str(prof_out)})
        print("\nphase breakdown (one fresh process; steps of front_onnx.api.transfer):")
        print_phases(ph)
        pr = run_child({"mode": "profile", "source": str(src), "target": str(tgt), "output": str(prof_out), **method})
        remove_output(prof_out)
        print(f"\ncProfile of one transfer ({pr['call_s']:.2f} s under the profiler):")
        for text in pr["profile"]:
            print(text)
        extra["phases"] = ph
        extra["profile"] = pr["profile"]

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "models": models, "budget": {"seconds": BUDGET_S,
                             "peak_rss_bytes": BUDGET_BYTES}, "verdict": verdict, "results": results, **extra},
                             indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
