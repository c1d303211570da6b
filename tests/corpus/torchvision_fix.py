"""Make the PyPI torchvision importable beside the CPU build of torch (run once by the Makefile's set-up).

timm imports torchvision at ``import timm`` (``timm.layers.create_norm`` uses
``torchvision.ops.misc.FrozenBatchNorm2d``), so installing timm without it is not an option.
The only torchvision built for torch 2.13 that the package index offers (0.28.0) is a CUDA
build: its C++ ops (``_C.so``) need ``libtorch_cuda.so`` and do not load beside the CPU
torch. torchvision copes with that (``extension._has_ops()`` is False and every op
registration checks it) except for two fake-kernel registrations, ``torchvision::nms`` and
``torchvision::qnms``, which run unconditionally and raise at import:
``RuntimeError: operator torchvision::nms does not exist``.

This script guards those two registrations with the same ``_has_ops()`` check. Afterwards
``import torchvision`` and ``import timm`` work; torchvision's compiled ops (nms, roi_align,
...) still raise torchvision's own "Couldn't load custom C++ ops" if called, which no model
of the corpus does. It does nothing when torchvision is absent or already imports, so it is
safe to run on any machine and any number of times.

    python tests/corpus/torchvision_fix.py
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

OPS = ("nms", "qnms")
GUARD = "torchvision.extension._has_ops()"


def _import_error(module: str) -> str:
    """'' when ``import module`` works in a fresh interpreter, else the last line of the error."""
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision_fix: torchvision is not installed; nothing to do")
        return 0
    error = _import_error("torchvision")
    if error:
        if "torchvision::" not in error or "does not exist" not in error:
            print(f"torchvision_fix: import torchvision fails for another reason: {error}", file=sys.stderr)
            return 1
        path = Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
        text = path.read_text()
        for op in OPS:
            old = f'@torch.library.register_fake("torchvision::{op}")'
            if text.count(old) != 1:
                print(f"torchvision_fix: {path} has no single line {old!r}; is this torchvision 0.28?", file=sys.stderr)
                return 1
            text = text.replace(old, f'@(torch.library.register_fake("torchvision::{op}") if {GUARD} else (lambda fn: fn))')
        path.write_text(text)
        error = _import_error("torchvision")
        if error:
            print(f"torchvision_fix: still failing after the patch: {error}", file=sys.stderr)
            return 1
        print(f"torchvision_fix: guarded the {'/'.join(OPS)} fake registrations in {path}")
    if importlib.util.find_spec("timm") is not None:
        check = ("import timm, torch; m = timm.create_model('vit_tiny_patch16_224', img_size=32, pretrained=False); "
                 "assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)")
        r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
        if r.returncode:
            print(f"torchvision_fix: timm does not work: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
    print("torchvision_fix: import torchvision" + (" and timm.create_model" if importlib.util.find_spec("timm") else "") + " work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
