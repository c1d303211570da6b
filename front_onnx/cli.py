"""The ``front-onnx`` command: a thin layer over the Python API.

Exit codes: 0 success; 1 internal error (a bug of ours: anything that is not one of the
package's error types; one line, a traceback with --debug); 2 bad command line; 3 bad
input (``FrontError``: unreadable or invalid model / learngene, unsafe external data,
NaN/Inf source weights, no float weights, source and target that share nothing, an output
that would overwrite an input or another output; docs/cli.md lists them);
4 validation failed; 5 the requested device (--device cuda) cannot be used; 6 (``weights``)
the weights file was written but is incomplete: weights without a name, parameters the
graph names but cannot give, or tensors written on an assumption (``--allow-partial``: 0).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from front_onnx import api, progress
from front_onnx._version import __version__
from front_onnx.errors import DeviceError, FrontError, ValidationFailed
from front_onnx.method.planning import format_plan
from front_onnx.method.amplitude import SCALES
from front_onnx.method.alignment import ORDERS as ALIGN_ORDERS
from front_onnx.method.selection import METHODS
from front_onnx.numeric.spectral import CONVENTIONS, DEPTH_MODES
from front_onnx.validation.runtime import DEVICES

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_INVALID, EXIT_DEVICE = 0, 1, 2, 3, 4, 5
EXIT_PARTIAL = 6  # weights: the file is written, but not every parameter is in it


def _keep(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"keep ratio must be in (0, 1], got {v}")
    return v


def _add_spectral(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", type=_keep, default=api.DEFAULT_KEEP,
                   help=f"share of low-frequency coefficients kept per feature/depth axis (default {api.DEFAULT_KEEP})")
    p.add_argument("--convention", choices=CONVENTIONS, default=api.DEFAULT_CONVENTION,
                   help="DCT scale convention: 'ortho' (orthonormal, keeps the std) or 'paper' "
                        f"(the authors' unnormalized DCT) (default {api.DEFAULT_CONVENTION})")


def _add_depth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depth", choices=DEPTH_MODES, default=api.DEFAULT_DEPTH,
                   help="how blocks are resampled when the target has more or fewer: 'spectral' (DCT along "
                        "the layer axis, as the paper), 'nearest' or 'linear' (by relative depth), 'identity' "
                        "(as 'nearest', and a block the source lacks starts as the identity: the last layer of "
                        f"its residual branches zero) (default {api.DEFAULT_DEPTH})")
    p.add_argument("--method", choices=METHODS, default=api.DEFAULT_METHOD,
                   help="'front' (the learngene's spectrum resized, the paper), 'select' (Weight Selection: "
                        "first blocks, evenly spaced units, or the strongest of a source ordered by importance; "
                        "shrinks only), 'hybrid' (selection where the target is no larger, FRONT where it "
                        "grows) or 'expand' (as 'hybrid', but a growth keeps the source's units and function: "
                        "new units the target's own values, read with zeros; checked against the source, else "
                        "transformed; from a learngene, as 'hybrid') (default %(default)s)")
    p.add_argument("--scale", choices=SCALES, default=api.DEFAULT_SCALE,
                   help="amplitude of the written weights: 'none' (as the convention leaves it), 'element' (each "
                        "block's element std the source block's), 'fan-in' (element, then weights scaled by "
                        "sqrt(source fan-in / target fan-in)), 'calibrated' (each layer's output std matched to the source "
                        "layer's, measured with onnxruntime; transfer only) (default %(default)s)")


def _add_align(p: argparse.ArgumentParser, default: str = "'importance' with --method hybrid or expand when it "
               "selects anything, none otherwise") -> None:
    p.add_argument("--align", nargs="?", const="smooth", default=None, choices=("none",) + ALIGN_ORDERS,
                   help="permute the source's channel spaces first (checked to keep the source's function): "
                        "'smooth' (a bare --align) puts similar units side by side for the transform; "
                        "'importance' puts the strongest units first, for selection; 'diverse' the strongest "
                        "that differ (importance discounted by redundancy), for selection. "
                        f"Without it: {default}")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, type=Path, help="output ONNX file (never an input)")
    p.add_argument("--report", type=Path, help="write the full plan as JSON to this file")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to OUTPUT.data: auto = when the target used external data or is over 2 GB")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    _add_json(p)
    p.add_argument("--no-validate", action="store_true", help="skip validating the output with onnxruntime")
    p.add_argument("--keep-invalid", action="store_true", help="keep the output even when validation fails")
    _add_validation(p)


def _add_validation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="onnxruntime provider: auto = CUDA when it really works, else CPU (default auto)")
    p.add_argument("--strict", action="store_true", help="activation-scale warnings fail validation")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also say why CUDA was not used when --device auto ran on CPU")


def _add_json(p: argparse.ArgumentParser, what: str = "the summary") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as one JSON document on stdout (nothing else there; no progress bar)")


def _add_nonfinite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="skip source templates whose weights hold NaN/Inf (reported) instead of refusing the source")


def _dim(s: str) -> tuple[str, int]:
    name, _, size = s.partition("=")
    if not name or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with a positive size, got {s!r}")
    return name, int(size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="front-onnx", description="FRONT: initialize ONNX models of any width "
                                     "and depth from a trained source's low-frequency weight spectrum.")
    parser.add_argument("--version", action="version", version=f"front-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("transfer", help="extract + init in one step")
    p.add_argument("source", type=Path, help="trained source ONNX model")
    p.add_argument("target", type=Path, help="target ONNX model (its weights are replaced)")
    _add_spectral(p)
    _add_output(p)
    _add_depth(p)
    _add_nonfinite(p)
    _add_align(p)
    p.add_argument("--calibration-inputs", type=Path, metavar="FILE.npz",
                   help="inputs for --scale calibrated, as .npz keyed by input name (else synthesized)")

    p = sub.add_parser("extract", help="write a source's learngene (safetensors + JSON metadata)")
    p.add_argument("source", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path, help="learngene file (.safetensors)")
    _add_spectral(p)
    _add_nonfinite(p)
    _add_align(p, "record the order in the learngene: 'importance' makes init --method hybrid select the "
                  "strongest units, as transfer does (default: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    _add_json(p)

    p = sub.add_parser("init", help="initialize a target from a learngene file")
    p.add_argument("target", type=Path)
    p.add_argument("--learngene", required=True, type=Path)
    _add_output(p)
    _add_depth(p)

    p = sub.add_parser("plan", help="show what a transfer would do to every target slot")
    p.add_argument("source", type=Path, help="source ONNX model or learngene (.safetensors)")
    p.add_argument("target", type=Path)
    _add_spectral(p)
    _add_depth(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--all", action="store_true", help="also list scalar constants (never touched)")
    _add_nonfinite(p)
    _add_align(p)

    p = sub.add_parser("validate", help="check a model with onnxruntime (structure, finiteness, scale, latency)")
    p.add_argument("model", type=Path)
    p.add_argument("--reference", type=Path, help="the original target: same graph expected, its shapes and scales")
    p.add_argument("--source", type=Path, help="the source: activation scales, and outputs if the architecture is identical")
    p.add_argument("--inputs", type=Path, help="inputs as .npz keyed by input name (else synthesized)")
    p.add_argument("--dim", type=_dim, action="append", default=[], metavar="NAME=SIZE",
                   help="size of a symbolic input dimension (default batch 1, sequence 16)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_validation(p)

    p = sub.add_parser("inspect", help="show stages, templates, weight layouts and spectral energy per keep ratio")
    p.add_argument("model", type=Path)
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="also draw the energy share per template across depth to this PNG (needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (per-block energies, every slot)")

    p = sub.add_parser("weights", help="write a model's weights keyed by the framework's parameter names (safetensors)")
    p.add_argument("model", type=Path, help="ONNX model (e.g. an initialized target)")
    p.add_argument("-o", "--output", required=True, type=Path, help="weights file (.safetensors)")
    p.add_argument("--names", choices=("torch", "onnx"), default="torch",
                   help="torch: parameter names and layout for load_state_dict; onnx: initializer names, as stored "
                        "(default torch)")
    p.add_argument("--allow-partial", action="store_true",
                   help=f"exit 0 when the file is incomplete (unnamed weights, missing parameters); "
                        f"default exit {EXIT_PARTIAL}")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success (unnamed, missing and assumed weights still go to stderr)")
    _add_json(p)

    p = sub.add_parser("refine", help="FRONT+: fine-tune a source briefly with a spectral penalty (needs torch)")
    p.add_argument("source", type=Path, help="trained source ONNX model")
    p.add_argument("--data", required=True, type=Path, help="inputs as .npz keyed by graph input name (rows on axis 0)")
    p.add_argument("--labels", type=Path, help="labels as .npy (integer classes: cross-entropy; else MSE); "
                   "without: self-distillation against the unrefined model")
    p.add_argument("--steps", type=_positive_int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--lam", type=_nonnegative, default=1.0, help="weight of the spectral penalty (default 1.0)")
    p.add_argument("--keep", type=_keep, default=0.5,
                   help="keep ratio the penalty protects (default 0.5, a typical learngene; at 1.0 nothing is "
                        "out of band and the penalty is zero)")
    p.add_argument("--lr", type=_nonnegative, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="rows per step (default 64)")
    p.add_argument("--weighting", choices=("mean", "size"), default="mean",
                   help="penalty over weights: mean share, or weighted by elements (default mean)")
    p.add_argument("--seed", type=int, default=0, help="batch order seed (default 0)")
    p.add_argument("-o", "--output", required=True, type=Path, help="refined ONNX file (never an input)")
    p.add_argument("--report", type=Path, help="write the report as JSON to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, print nothing on success")
    _add_json(p, "the report")
    return parser


def _positive_int(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def _nonnegative(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v >= 0.0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def _external(v: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[v]


def _run(args: argparse.Namespace) -> int:
    if args.command == "transfer":
        r = api.transfer(args.source, args.target, args.output, keep=args.keep, convention=args.convention,
                         report=args.report, external_data=_external(args.external_data),
                         allow_nonfinite=args.allow_nonfinite, align=args.align,
                         calibration_inputs=args.calibration_inputs, **_vargs(args))
        _print_result(r, args)
    elif args.command == "extract":
        t0 = time.perf_counter()
        gene = api.extract(args.source, keep=args.keep, convention=args.convention,
                           allow_nonfinite=args.allow_nonfinite, output=args.output, align=args.align)
        n = sum(t.coefficients.size for t in gene.templates.values())
        if args.json:
            _print_json({"command": "extract", "ok": True, "output": str(args.output), "source": str(args.source),
                         "templates": len(gene.templates), "coefficients": int(n), "keep": gene.keep,
                         "convention": gene.convention, "skipped": dict(sorted(gene.skipped.items())),
                         "timings": {"extract_s": round(time.perf_counter() - t0, 4)}})
        elif not args.quiet:
            print(f"{args.output}: {len(gene.templates)} templates, {n} coefficients "
                  f"(keep {gene.keep}, convention {gene.convention})"
                  + (f"; {len(gene.skipped)} skipped" if gene.skipped else ""))
            for key, why in sorted(gene.skipped.items()):
                print(f"skipped {key}: {why}")
    elif args.command == "init":
        r = api.initialize(args.target, args.learngene, args.output, report=args.report,
                           external_data=_external(args.external_data), **_vargs(args))
        _print_result(r, args)
    elif args.command == "plan":
        p = api.plan(args.source, args.target, keep=args.keep, convention=args.convention, depth=args.depth,
                     allow_nonfinite=args.allow_nonfinite, method=args.method, align=args.align)
        if args.json:
            json.dump(p.to_json(), sys.stdout, indent=2)
            print()
        else:
            print(format_plan(p, verbose=args.all))
        if p.verdict:  # transfer would refuse this pair: the same verdict, the same exit code
            print(f"front-onnx: error: {p.verdict}", file=sys.stderr)
            return EXIT_INPUT
    elif args.command == "validate":
        rep = api.validate(args.model, reference=args.reference, source=args.source, device=args.device,
                           inputs=args.inputs, dims=dict(args.dim), strict=args.strict)
        print(json.dumps(rep.to_json(), indent=2) if args.json else rep.table(verbose=args.verbose))
        return EXIT_OK if rep.ok else EXIT_INVALID
    elif args.command == "inspect":
        rep = api.inspect(args.model, plot=args.plot)
        if args.json:
            data = rep.to_json()
            if args.plot is not None:
                data["plot"] = str(args.plot)
            json.dump(data, sys.stdout, indent=2)
            print()
        else:
            print(rep.table())
            if args.plot is not None:
                print(f"plot: {args.plot}")
    elif args.command == "weights":
        t0 = time.perf_counter()
        nw = api.weights(args.model, args.output, names=args.names)
        for init, why in nw.unnamed:
            print(f"unnamed: {init}: {why}", file=sys.stderr)
        for name, why in nw.missing:
            print(f"missing: {name}: {why}", file=sys.stderr)
        for name, why in nw.assumed:
            print(f"assumed: {name}: {why}", file=sys.stderr)
        if args.json:
            _print_json({"command": "weights", "ok": True, "output": str(args.output), "names": args.names,
                         "tensors": len(nw.tensors), "summary": nw.summary_line(), "complete": nw.complete,
                         "unnamed": [{"initializer": i, "reason": why} for i, why in nw.unnamed],
                         "missing": [{"name": n, "reason": why} for n, why in nw.missing],
                         "assumed": [{"name": n, "reason": why} for n, why in nw.assumed],
                         "notes": list(nw.notes),
                         "timings": {"weights_s": round(time.perf_counter() - t0, 4)}})
        elif not args.quiet:
            for note in nw.notes:
                print(f"note: {note}")
            print(f"{args.output}: {nw.summary_line()}")
        if not nw.complete and not args.allow_partial:
            return EXIT_PARTIAL
    elif args.command == "refine":
        rep = api.refine(args.source, args.data, args.labels, steps=args.steps, lam=args.lam, keep=args.keep,
                         lr=args.lr, batch_size=args.batch_size, output=args.output, report=args.report,
                         progress=progress.enabled(), seed=args.seed, weighting=args.weighting)
        if args.json:
            _print_json({"command": "refine", "ok": True, "output": str(args.output),
                         "report": str(args.report) if args.report is not None else None, **rep.to_json()})
        elif not args.quiet:
            print(rep.table())
    return EXIT_OK


def _vargs(args: argparse.Namespace) -> dict:
    return {"validate": not args.no_validate, "device": args.device, "strict": args.strict,
            "keep_invalid": args.keep_invalid, "depth": args.depth, "method": args.method, "scale": args.scale}


def _print_json(data: dict) -> None:
    json.dump(data, sys.stdout, indent=2)
    print()


def _print_result(r: api.InitResult, args: argparse.Namespace) -> None:
    """The summary of transfer / init: lines, or one JSON document with ``--json`` (then any
    activation-scale warning also goes to stderr, so that stdout is only the document)."""
    v = r.validation
    if args.json:
        _print_json({"command": args.command, **r.to_json()})
        if v is not None and not args.quiet:
            for line in v.warning_lines():
                print(f"WARNING: {line}", file=sys.stderr)
        return
    if args.quiet:
        return
    print(r.summary_line())
    for line in r.detail_lines():
        print(line)
    if v is not None:
        lat = f", {v.latency_ms:.2f} ms" if v.latency_ms is not None else ""
        print(f"validation: valid; {v.provider_line(args.verbose)}{lat}")
        for line in v.warning_lines():
            print(f"WARNING: {line}")


def _progress_shown(args: argparse.Namespace) -> bool:
    """Progress bars only for a person: stderr is a terminal, and neither -q nor --json."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        tty = False
    return tty and not getattr(args, "quiet", False) and not getattr(args, "json", False)


def _fail(args: argparse.Namespace, code: int, message: str, extra: dict | None = None) -> int:
    """An error: its line on stderr; with ``--json`` also one JSON document on stdout, so that
    a pipeline always has a document to parse."""
    print(f"front-onnx: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"command": args.command, "ok": False, "exit_code": code, "error": message, **(extra or {})})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with progress.shown(_progress_shown(args)):
            return _run(args)
    except ValidationFailed as e:
        print(e.report.table(verbose=getattr(args, "verbose", False)), file=sys.stderr)
        result = getattr(e, "result", None)
        extra = result.to_json() if result is not None else {"validation": e.report.to_json()}
        extra.pop("ok", None)
        return _fail(args, EXIT_INVALID, str(e), extra)
    except DeviceError as e:
        return _fail(args, EXIT_DEVICE, str(e))
    except FrontError as e:
        return _fail(args, EXIT_INPUT, str(e))
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("front-onnx: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: one line, the traceback with --debug
        if args.debug:
            import traceback

            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"front-onnx: internal error: {type(e).__name__}: {first} (please report this; "
              "--debug shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
