"""PyTorch side of front-onnx (FRONT+): run ONNX graphs as trainable torch modules, the spectral
penalty, and the refinement loop. Importing it needs torch; the rest of front-onnx does not."""

from front_onnx.torch.executor import OnnxModule, UnsupportedOpsError  # noqa: E402
from front_onnx.torch.penalty import module_layouts, spectral_penalty, spectral_shares  # noqa: E402
from front_onnx.torch.refine import RefineReport, RefineResult, refine_module, refine_onnx  # noqa: E402

__all__ = ["OnnxModule", "UnsupportedOpsError", "spectral_penalty", "spectral_shares", "module_layouts",
           "refine_module", "refine_onnx", "RefineResult", "RefineReport"]
