"""PyTorch side of front-onnx: ``transfer_module`` (FRONT between two torch modules), and FRONT+:
run ONNX graphs as trainable torch modules, the spectral penalty, and the refinement loop.
Importing it needs torch; the rest of front-onnx does not."""

from front_onnx.torch.executor import OnnxModule, UnsupportedOpsError  # noqa: E402
from front_onnx.torch.modules import ModuleTransfer, transfer_module
from front_onnx.torch.penalty import module_layouts, spectral_penalty, spectral_shares  # noqa: E402
from front_onnx.torch.refine import RefineReport, RefineResult, refine_module, refine_onnx  # noqa: E402

__all__ = ["OnnxModule", "UnsupportedOpsError", "spectral_penalty", "spectral_shares", "module_layouts",
           "refine_module", "refine_onnx", "RefineResult", "RefineReport", "transfer_module", "ModuleTransfer"]
