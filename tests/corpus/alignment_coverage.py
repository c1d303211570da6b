"""How far the importance alignment reaches on the corpus's sources, per family and export.

For each family's trained-like source, exported three ways (the corpus's ``dynamo`` and
``legacy`` files, and ``module``: ``transfer_module``'s own export, dynamo without its
optimizer, made here in a temporary folder), the table gives:

- ``kept/planned``: channel spaces the importance order plans, and those that hold the
  function check (``validation.equivalence.aligned_source``: the permuted source's outputs
  must equal the source's) and are therefore ordered;
- ``att``: attentions whose heads are ordered strongest first (after the check).

A space that fails the check keeps its order: the transfer then selects its leading units,
which are not the strongest. So a lower ``kept`` is a weaker initialization, never a wrong
one.

    python -m tests.corpus.alignment_coverage              # every family (about a minute)
    python -m tests.corpus.alignment_coverage gpt2 t5      # some families
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.corpus.build import FAMILIES, MODELS, build_module, example_inputs


def _module_export(name: str, folder: Path) -> Path:
    import torch

    from front_onnx.torch.modules import export_module

    family = FAMILIES[name]
    feeds = {k: torch.from_numpy(v) for k, v in example_inputs(family).items() if k in family.args}
    path = folder / f"{name}.onnx"
    export_module(build_module(family, "source"), feeds, path)
    return path


def coverage(path: Path, work: Path) -> tuple[int, int, int]:
    """(kept, planned, attentions with ordered heads) of one source file."""
    from front_onnx.analysis import weight_slots
    from front_onnx.method.alignment import plan_alignment
    from front_onnx.onnxio import load_model
    from front_onnx.validation.equivalence import aligned_source

    m = load_model(path)
    gs = weight_slots(m)
    planned = plan_alignment(m, gs, order="importance")
    _, al = aligned_source(m, gs, work, order="importance")
    attentions = len({frozenset((s.id, s.heads_with)) for s in al.spaces if s.heads_with})
    return len(al.spaces), len(planned.spaces), attentions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("families", nargs="*", default=sorted(FAMILIES))
    a = p.parse_args(argv)
    print("| family | dynamo | legacy | module (transfer_module) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="front-onnx-coverage-") as tmp:
        folder = Path(tmp)
        for name in a.families:
            cells = []
            for exporter in ("dynamo", "legacy", "module"):
                path = (_module_export(name, folder) if exporter == "module"
                        else MODELS / name / exporter / "source.onnx")
                kept, planned, att = coverage(path, folder / f"{name}-{exporter}")
                cells.append(f"{kept}/{planned}, {att} att.")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
